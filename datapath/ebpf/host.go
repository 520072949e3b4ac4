package ebpf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/bpf"
	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// gwDevice (a portless bridge) holds every gateway address of the eBPF
// networks. Its alias is
// not datapath.OwnerPrefix-marked: the kernel datapath's pruning must not
// take it for a leftover of its own.
const (
	gwDevice = "fabric-gw"
	gwAlias  = "fabric-ebpf gateways"
)

// rtProtoFabric marks the routes this package makes in the host's
// namespace, so Sync can prune them.
const rtProtoFabric = plumb.RouteProtocol

// prepareHost turns on forwarding and makes the gateway device.
func (f *Forwarder) prepareHost() error {
	if err := f.sysctl("net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	_, err := f.gateway()
	return err
}

func (f *Forwarder) sysctl(name, value string) error {
	return netns.Do(f.nsPath, func() error { return plumb.EnsureSysctl(name, value) })
}

// gateway returns the gateway device, creating it if needed.
func (f *Forwarder) gateway() (netlink.Link, error) {
	l, err := f.nl.LinkByName(gwDevice)
	if err == nil {
		if l.Type() != "bridge" || l.Attrs().Alias != gwAlias {
			return nil, fmt.Errorf("link %s exists and is not fabric's gateway device; rename or remove it", gwDevice)
		}
		if l.Attrs().Flags&net.FlagUp == 0 {
			if err := f.nl.LinkSetUp(l); err != nil {
				return nil, fmt.Errorf("set %s up: %w", gwDevice, err)
			}
		}
		return l, nil
	}
	var nf netlink.LinkNotFoundError
	if !errors.As(err, &nf) {
		return nil, fmt.Errorf("look up %s: %w", gwDevice, err)
	}
	la := netlink.NewLinkAttrs()
	la.Name = gwDevice
	la.Flags = net.FlagUp
	// A bridge without ports: it only holds addresses, like a dummy
	// device, and unlike dummy it is in every kernel that has the kernel
	// datapath (some build dummy as a module or not at all).
	d := &netlink.Bridge{LinkAttrs: la}
	if err := f.nl.LinkAdd(d); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("create %s: %w", gwDevice, err)
	}
	l, err = f.nl.LinkByName(gwDevice)
	if err != nil {
		return nil, fmt.Errorf("look up new %s: %w", gwDevice, err)
	}
	if err := f.nl.LinkSetAlias(l, gwAlias); err != nil {
		return nil, fmt.Errorf("set alias on %s: %w", gwDevice, err)
	}
	if err := f.nl.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("set %s up: %w", gwDevice, err)
	}
	return l, nil
}

func hostPrefix(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Masked().Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}
}

// ensureGatewayAddr puts gw/32 on the gateway device.
func (f *Forwarder) ensureGatewayAddr(gw netip.Addr) error {
	l, err := f.gateway()
	if err != nil {
		return err
	}
	if err := f.nl.AddrReplace(l, &netlink.Addr{IPNet: hostPrefix(gw)}); err != nil {
		return fmt.Errorf("add gateway %s to %s: %w", gw, gwDevice, err)
	}
	return nil
}

func (f *Forwarder) deleteGatewayAddr(gw netip.Addr) error {
	l, err := f.nl.LinkByName(gwDevice)
	if err != nil {
		return nil // no device, no address
	}
	if err := f.nl.AddrDel(l, &netlink.Addr{IPNet: hostPrefix(gw)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("remove gateway %s from %s: %w", gw, gwDevice, err)
	}
	return nil
}

// subnetRoute makes the subnet unreachable except where a /32 endpoint
// route says otherwise, so traffic for a free address is refused here
// instead of leaking out of the default route.
func subnetRoute(p netip.Prefix) *netlink.Route {
	return &netlink.Route{Dst: ipNet(p), Type: unix.RTN_UNREACHABLE, Protocol: rtProtoFabric, Table: unix.RT_TABLE_MAIN}
}

func endpointRoute(addr, gw netip.Addr, ifindex int) *netlink.Route {
	return &netlink.Route{
		Dst: hostPrefix(addr), LinkIndex: ifindex, Scope: netlink.SCOPE_LINK,
		Protocol: rtProtoFabric, Table: unix.RT_TABLE_MAIN, Src: gw.AsSlice(),
	}
}

// ensureEndpointRoute routes addr through its veth with a permanent
// neighbour entry: the host never ARPs for a sandbox it made.
func (f *Forwarder) ensureEndpointRoute(addr, gw netip.Addr, mac net.HardwareAddr, ifindex int) error {
	n := &netlink.Neigh{
		LinkIndex: ifindex, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
		IP: addr.AsSlice(), HardwareAddr: mac,
	}
	if err := f.nl.NeighSet(n); err != nil {
		return fmt.Errorf("neighbour %s lladdr %s: %w", addr, mac, err)
	}
	if err := f.nl.RouteReplace(endpointRoute(addr, gw, ifindex)); err != nil {
		return fmt.Errorf("route %s/32: %w", addr, err)
	}
	return nil
}

// refreshHostAddrs tells the programs every IPv4 address of the host, the
// addresses a wildcard published port answers on.
func (f *Forwarder) refreshHostAddrs() error {
	addrs, err := plumb.RetryDump(func() ([]netlink.Addr, error) { return f.nl.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("list host addresses: %w", err)
	}
	var list []netip.Addr
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && !ip.IsLoopback() {
			list = append(list, ip)
		}
	}
	return f.objs.SetHostAddrs(list)
}

// fabricRoutes lists the routes this package made.
func (f *Forwarder) fabricRoutes() ([]netlink.Route, error) {
	routes, err := plumb.RetryDump(func() ([]netlink.Route, error) {
		return f.nl.RouteListFiltered(netlink.FAMILY_V4,
			&netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: rtProtoFabric},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	})
	if err != nil {
		return nil, fmt.Errorf("list fabric routes: %w", err)
	}
	return routes, nil
}

func bpfNetwork(id bpf.NetID, n datapath.Network) bpf.Network {
	b := bpf.Network{ID: id, Subnet: n.Subnet, Gateway: n.Gateway, RouterMAC: routerMAC(n.ID), Internal: n.Internal}
	if n.Driver == datapath.DriverOverlay {
		b.VNI = n.VNI
	}
	return b
}
