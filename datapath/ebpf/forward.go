package ebpf

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/bpf"
	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// EnsureNetwork programs a bridge or overlay network: its gateway address
// on the gateway device, its subnet unreachable but for endpoint routes,
// and its entry in the programs' networks map; for an overlay network
// also the tunnel device (overlay.go).
func (f *Forwarder) EnsureNetwork(n datapath.Network) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ensureNetwork(n)
}

func (f *Forwarder) ensureNetwork(n datapath.Network) error {
	if !n.Subnet.Addr().Is4() || !n.Gateway.Is4() {
		return fmt.Errorf("network %s: the eBPF datapath serves IPv4 networks only: %w", n.ID, datapath.ErrInvalid)
	}
	switch n.Driver {
	case datapath.DriverBridge, "":
	case datapath.DriverOverlay:
		if err := f.checkOverlay(n); err != nil {
			return err
		}
	default:
		return fmt.Errorf("network %s: driver %q is not served by the eBPF forwarder: %w", n.ID, n.Driver, datapath.ErrInvalid)
	}
	id := netID(n.ID)
	for other, st := range f.nets {
		if other != n.ID && st.id == id {
			return fmt.Errorf("network %s: program id %d is taken by network %s; recreate one of them: %w", n.ID, id, other, datapath.ErrInvalid)
		}
	}
	if old, ok := f.nets[n.ID]; ok && old.net.Gateway != n.Gateway {
		if err := f.deleteGatewayAddr(old.net.Gateway); err != nil {
			return err
		}
	}
	if err := f.ensureGatewayAddr(n.Gateway); err != nil {
		return fmt.Errorf("network %s: %w", n.ID, err)
	}
	if err := f.nl.RouteReplace(subnetRoute(n.Subnet)); err != nil {
		return fmt.Errorf("network %s: route for %s: %w", n.ID, n.Subnet, err)
	}
	if n.Driver == datapath.DriverOverlay {
		// The device before the network: the endpoint program tunnels
		// as soon as the network has a VNI.
		if err := f.ensureTunnel(); err != nil {
			return fmt.Errorf("network %s: %w", n.ID, err)
		}
	}
	if err := f.objs.PutNetwork(bpfNetwork(id, n)); err != nil {
		return fmt.Errorf("network %s: %w", n.ID, err)
	}
	f.nets[n.ID] = netState{id: id, net: n}
	if err := f.refreshHostAddrs(); err != nil {
		return fmt.Errorf("network %s: %w", n.ID, err)
	}
	return nil
}

// DeleteNetwork removes what EnsureNetwork made.
func (f *Forwarder) DeleteNetwork(n datapath.Network) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.objs.DeleteNetwork(netID(n.ID)); err != nil {
		return err
	}
	// Its remotes: with the network gone they are unreachable anyway. The
	// tunnel device stays until Sync finds no overlay network left.
	if err := f.setRemotes(datapath.Network{ID: n.ID, Driver: datapath.DriverOverlay}, nil); err != nil {
		return err
	}
	if n.Gateway.IsValid() {
		if err := f.deleteGatewayAddr(n.Gateway); err != nil {
			return err
		}
	}
	if n.Subnet.IsValid() {
		if err := f.nl.RouteDel(subnetRoute(n.Subnet)); err != nil && !isNoRoute(err) {
			return fmt.Errorf("network %s: remove route for %s: %w", n.ID, n.Subnet, err)
		}
	}
	delete(f.nets, n.ID)
	return f.refreshHostAddrs()
}

// EnsureEndpoint programs an endpoint's host side: map entries, the route
// and neighbour entry to it, its published ports and the tc program.
func (f *Forwarder) EnsureEndpoint(n datapath.Network, ep datapath.Endpoint, host netlink.Link) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.nets[n.ID]; !ok {
		if err := f.ensureNetwork(n); err != nil {
			return err
		}
	}
	ifindex := host.Attrs().Index
	addr := ep.Addr.Addr()
	if err := f.forgetOldVeth(ep.ID, ifindex); err != nil {
		return err
	}
	if err := f.objs.PutEndpoint(bpf.Endpoint{HostIfindex: ifindex, Addr: addr, MAC: ep.MAC, Network: netID(n.ID)}); err != nil {
		return err
	}
	if err := f.ensureEndpointRoute(addr, n.Gateway, ep.MAC, ifindex); err != nil {
		return err
	}
	ports, err := portsOf(ep)
	if err != nil {
		return err
	}
	old, had := f.eps[ep.ID]
	for _, p := range old.ports {
		if !slices.Contains(ports, p) {
			if err := f.objs.DeletePort(p); err != nil {
				return err
			}
		}
	}
	for _, p := range ports {
		if err := f.objs.PutPort(p); err != nil {
			return err
		}
	}
	f.eps[ep.ID] = epState{ifindex: ifindex, ports: ports}
	// Attached before on this very veth: missing now is drift.
	expected := had && old.ifindex == ifindex && old.attached
	if err := f.ensureEndpointTC(ifindex, expected); err != nil {
		return err
	}
	f.eps[ep.ID] = epState{ifindex: ifindex, ports: ports, attached: true}
	return nil
}

// forgetOldVeth drops what the endpoint's previous host veth left in the
// maps and pins when the endpoint now has another one (the veth was
// removed by hand and made again): the address stays held by a dead
// ifindex otherwise.
func (f *Forwarder) forgetOldVeth(id string, ifindex int) error {
	old, ok := f.eps[id]
	if !ok || old.ifindex == ifindex {
		return nil
	}
	if err := f.objs.DeleteEndpoint(old.ifindex); err != nil {
		return fmt.Errorf("endpoint %s: forget old host veth %d: %w", id, old.ifindex, err)
	}
	return f.detachEndpointTC(old.ifindex)
}

func portsOf(ep datapath.Endpoint) ([]bpf.Port, error) {
	var out []bpf.Port
	for _, pm := range ep.Ports {
		p := bpf.Port{HostAddr: pm.HostIP, HostPort: pm.HostPort, Target: ep.Addr.Addr(), TargetPort: pm.Port}
		switch pm.Proto {
		case "tcp", "":
			p.Proto = bpf.ProtoTCP
		case "udp":
			p.Proto = bpf.ProtoUDP
		default:
			return nil, fmt.Errorf("endpoint %s: protocol %q: %w", ep.ID, pm.Proto, datapath.ErrInvalid)
		}
		out = append(out, p)
	}
	return out, nil
}

// DeleteEndpoint forgets an endpoint before its veth goes.
func (f *Forwarder) DeleteEndpoint(n datapath.Network, ep datapath.Endpoint) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.eps[ep.ID]
	if !ok {
		// Not ensured by this process (deleted before the first Sync):
		// find it by its veth.
		l, err := f.nl.LinkByName(ep.HostIfName)
		if err != nil {
			return nil // no veth: nothing attached, map entries go with Sync
		}
		st.ifindex = l.Attrs().Index
		if st.ports, err = portsOf(ep); err != nil {
			return err
		}
	}
	for _, p := range st.ports {
		if err := f.objs.DeletePort(p); err != nil {
			return err
		}
	}
	if err := f.objs.DeleteEndpoint(st.ifindex); err != nil {
		return err
	}
	if err := f.detachEndpointTC(st.ifindex); err != nil {
		return err
	}
	gone := ep.Addr.Addr()
	if err := f.forgetRedirected(func(c bpf.RedirConn) bool { return c.Local.Addr() == gone || c.Remote.Addr() == gone }); err != nil {
		return err
	}
	delete(f.eps, ep.ID)
	return nil
}

// Sync forgets everything the state does not hold: map entries, published
// ports, gateway addresses, routes and link pins of networks and endpoints
// that are gone. The kernel datapath has ensured everything in s already.
func (f *Forwarder) Sync(s datapath.State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.wanted(s)
	var errs []error
	errs = append(errs, f.pruneMaps(w)...)
	errs = append(errs, f.prunePins(w))
	errs = append(errs, f.pruneBlockQdiscs(w.ifindex))
	errs = append(errs, f.pruneHostSide(w)...)
	errs = append(errs, f.syncOverlay(w.nets, s))
	errs = append(errs, f.refreshHostAddrs())
	errs = append(errs, f.ensureUplinkAttached())
	errs = append(errs, f.ensureSockRedir(w))
	return errors.Join(errs...)
}

// want is what a Sync keeps: everything else it finds is pruned.
type want struct {
	nets    map[string]datapath.Network
	ifindex map[int]bool
	ports   map[bpf.Port]bool
	addr    map[netip.Addr]bool
}

// wanted is what s asks for, and forgets the networks and endpoints it
// does not name. Endpoints that failed to ensure are not wanted: their
// errors are the datapath's to report.
func (f *Forwarder) wanted(s datapath.State) want {
	w := want{nets: map[string]datapath.Network{}, ifindex: map[int]bool{}, ports: map[bpf.Port]bool{}, addr: map[netip.Addr]bool{}}
	for _, n := range s.Networks {
		if n.Driver == datapath.DriverBridge || n.Driver == "" || n.Driver == datapath.DriverOverlay {
			w.nets[n.ID] = n
		}
	}
	for id := range f.nets {
		if _, ok := w.nets[id]; !ok {
			delete(f.nets, id)
		}
	}
	eps := map[string]bool{}
	for _, ep := range s.Endpoints {
		if _, ok := w.nets[ep.NetworkID]; !ok {
			continue
		}
		st, ok := f.eps[ep.ID]
		if !ok {
			continue
		}
		eps[ep.ID] = true
		w.ifindex[st.ifindex] = true
		w.addr[ep.Addr.Addr()] = true
		for _, p := range st.ports {
			w.ports[p] = true
		}
	}
	for id := range f.eps {
		if !eps[id] {
			delete(f.eps, id)
		}
	}
	return w
}

// pruneMaps deletes the endpoint, network and port entries w lacks.
func (f *Forwarder) pruneMaps(w want) []error {
	wantIDs := map[bpf.NetID]bool{}
	for id := range w.nets {
		wantIDs[netID(id)] = true
	}
	errs := deleteUnwanted(f.objs.EndpointIfindexes, w.ifindex, f.objs.DeleteEndpoint)
	errs = append(errs, deleteUnwanted(f.objs.NetworkIDs, wantIDs, f.objs.DeleteNetwork)...)
	return append(errs, deleteUnwanted(f.objs.Ports, w.ports, f.objs.DeletePort)...)
}

// deleteUnwanted deletes every entry list returns that keep lacks.
func deleteUnwanted[K comparable](list func() ([]K, error), keep map[K]bool, del func(K) error) []error {
	keys, err := list()
	if err != nil {
		return []error{err}
	}
	var errs []error
	for _, k := range keys {
		if !keep[k] {
			errs = append(errs, del(k))
		}
	}
	return errs
}

// prunePins detaches the endpoint programs of veths w lacks.
func (f *Forwarder) prunePins(w want) error {
	dir := filepath.Join(f.opts.BPFRoot, "links")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list pinned links: %w", err)
	}
	var errs []error
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), "ep-")
		if !ok {
			continue
		}
		if ifindex, err := strconv.Atoi(rest); err == nil && w.ifindex[ifindex] {
			continue
		}
		errs = append(errs, f.detach(filepath.Join(dir, e.Name())))
	}
	return errors.Join(errs...)
}

// pruneHostSide removes the gateway addresses and routes of networks and
// endpoints w lacks.
func (f *Forwarder) pruneHostSide(w want) []error {
	var errs []error
	wantGW := map[netip.Addr]bool{}
	wantSubnet := map[netip.Prefix]bool{}
	for _, n := range w.nets {
		wantGW[n.Gateway] = true
		wantSubnet[n.Subnet.Masked()] = true
	}
	if gw, err := f.nl.LinkByName(gwDevice); err == nil {
		addrs, err := plumb.RetryDump(func() ([]netlink.Addr, error) { return f.nl.AddrList(gw, netlink.FAMILY_V4) })
		if err != nil {
			errs = append(errs, fmt.Errorf("list %s addresses: %w", gwDevice, err))
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && !wantGW[ip] {
				errs = append(errs, f.deleteGatewayAddr(ip))
			}
		}
	}
	routes, err := f.fabricRoutes()
	if err != nil {
		return append(errs, err)
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		ip, _ := netip.AddrFromSlice(r.Dst.IP.To4())
		ones, _ := r.Dst.Mask.Size()
		p := netip.PrefixFrom(ip, ones)
		if wantSubnet[p] || (ones == 32 && w.addr[ip]) {
			continue
		}
		if err := f.nl.RouteDel(&r); err != nil && !isNoRoute(err) {
			errs = append(errs, fmt.Errorf("remove route %s: %w", p, err))
		}
	}
	return errs
}

func isNoRoute(err error) bool {
	return errors.Is(err, unix.ESRCH)
}
