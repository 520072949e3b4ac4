package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/ipam"
)

// What a container engine's plugin (Docker's network and IPAM driver)
// needs beyond the public API: it hands out subnets and addresses before
// it knows the network, checks ports before the namespace exists, and
// marks the sandboxes it made as its own. Everything here only reads,
// except OwnSandbox, which changes one sandbox under the agent's lock.

// FreeSubnet picks a subnet no network uses (what `network create`
// without --subnet would take), excluding avoid (subnets handed out but
// not yet turned into networks).
func (a *Agent) FreeSubnet(avoid []netip.Prefix) (netip.Prefix, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := &networkRec{}
	if err := a.planSubnet(n, api.NetworkCreate{}, ipam.DefaultPools(), avoid); err != nil {
		return netip.Prefix{}, err
	}
	return n.Subnet, nil
}

// CheckSubnet refuses a subnet that overlaps a network without being
// exactly its subnet (an equal subnet may be that network, adopted).
func (a *Agent) CheckSubnet(sub netip.Prefix) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, o := range a.networks {
		if o.Subnet != sub && ipam.Overlaps(o.Subnet, sub) {
			return conflictf("subnet %s overlaps network %q (%s)", sub, o.Name, o.Subnet)
		}
	}
	return nil
}

// FreeAddress returns an address of network nobody uses, skipping avoid
// (addresses handed out but not yet connected). Nothing is reserved: the
// caller connects with it as a static address, which claims it.
func (a *Agent) FreeAddress(netRef string, avoid map[netip.Addr]bool) (netip.Addr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n, err := a.networkLocked(netRef)
	if err != nil {
		return netip.Addr{}, err
	}
	pool := a.pools[n.ID]
	var held []netip.Addr
	defer func() {
		for _, ip := range held {
			pool.Release(ip)
		}
	}()
	for range pool.Size() + 1 {
		ip, err := pool.Allocate("peek")
		if err != nil {
			return netip.Addr{}, classifyIPAM(err)
		}
		held = append(held, ip)
		if !avoid[ip] && (n.Driver != api.DriverOverlay || a.overlayAddrFree(n, ip)) {
			return ip, nil
		}
	}
	return netip.Addr{}, &userError{ErrExhausted, "network " + n.Name + " has no free address"}
}

// CheckAddress says whether ip can be a static address on the network.
func (a *Agent) CheckAddress(netRef string, ip netip.Addr) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	n, err := a.networkLocked(netRef)
	if err != nil {
		return err
	}
	pool := a.pools[n.ID]
	if err := pool.Claim(ip, "check"); err != nil {
		return classifyIPAM(err)
	}
	pool.Release(ip)
	if n.Driver == api.DriverOverlay && !a.overlayAddrFree(n, ip) {
		return conflictf("address %s is in use on network %q on another node", ip, n.Name)
	}
	return nil
}

// CheckPorts refuses -p specs that are malformed or whose host port is
// already published.
func (a *Agent) CheckPorts(specs []string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, err := a.planPorts(specs)
	return err
}

// OwnSandbox marks a sandbox as managed by owner (with the owner's
// container ID) and, if it publishes nothing yet, publishes ports on its
// primary endpoint.
func (a *Agent) OwnSandbox(ctx context.Context, name, owner, containerID string, ports []string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	sb := a.sandboxes[name]
	if sb == nil {
		return notFoundf("sandbox %q not found", name)
	}
	old := *sb
	sb.Owner, sb.ContainerID = owner, containerID
	if len(ports) > 0 && len(sb.Ports) == 0 {
		planned, err := a.planPorts(ports)
		if err != nil {
			*sb = old
			return err
		}
		a.dropSandbox(sb)
		sb.Ports = planned
		a.putSandbox(sb)
	}
	if err := a.store.Update(func(tx storeTx) error { return tx.Put(bucketSandboxes, sb.Name, sb) }); err != nil {
		a.dropSandbox(sb)
		*sb = old
		a.putSandbox(sb)
		return err
	}
	if len(sb.Ports) != len(old.Ports) {
		if p := a.primaryEndpoint(sb.Name); p != nil {
			return a.ensureEndpoint(ctx, p)
		}
	}
	return nil
}

// overlayAddrFree says whether no other node holds ip of an overlay
// network: neither as a static claim nor inside a block it leased.
func (a *Agent) overlayAddrFree(n *networkRec, ip netip.Addr) bool {
	if a.cl == nil {
		return false
	}
	for _, c := range a.cl.Claims(n.Name) {
		if c.IP == ip {
			return false
		}
	}
	for _, l := range a.cl.Leases(n.Name) {
		if l.Node != a.cl.Name() && l.Block.Contains(ip) {
			return false
		}
	}
	return true
}

// SetAliases replaces the aliases of a sandbox's endpoint on a network:
// names its owner learns only once the namespace is connected (Docker's
// container name and --network-alias). Names that are not one DNS label
// are left out. The names are served at once and, on an overlay network,
// announced to the cluster.
func (a *Agent) SetAliases(sandbox, netRef string, aliases []string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	n, err := a.networkLocked(netRef)
	if err != nil {
		return err
	}
	var ep *endpointRec
	for _, e := range a.bySandbox[sandbox] {
		if e.NetworkID == n.ID && e.Phase == phaseReady {
			ep = e
		}
	}
	if ep == nil {
		return notFoundf("sandbox %q is not connected to network %q", sandbox, n.Name)
	}
	var valid []string
	for _, al := range aliases {
		if validAliases([]string{al}) == nil && !slices.Contains(valid, al) {
			valid = append(valid, al)
		}
	}
	old := ep.Aliases
	ep.Aliases = valid
	if err := a.store.Update(func(tx storeTx) error { return tx.Put(bucketEndpoints, ep.ID, ep) }); err != nil {
		ep.Aliases = old
		return err
	}
	a.refreshEndpointDNS(ep)
	a.publish([]*endpointRec{ep})
	return nil
}

// ServeNamesAt serves fabric's names on addr port 53 (UDP and TCP) in the
// agent's namespace until ctx ends, for the sandboxes that ask from one
// of their endpoint addresses: Docker's resolver, started with --dns addr,
// forwards there from inside the container what it does not know itself
// (containers on other hosts, fabric's sandboxes). addr is added to lo
// while it is served.
func (a *Agent) ServeNamesAt(ctx context.Context, addr netip.Addr) error {
	if a.dns == nil {
		return invalidf("the embedded DNS server is off")
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	nl := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(addr.BitLen(), addr.BitLen())}, Scope: unix.RT_SCOPE_HOST}
	if err := netlink.AddrReplace(lo, nl); err != nil {
		return fmt.Errorf("add %s to lo: %w", addr, err)
	}
	defer func() { _ = netlink.AddrDel(lo, nl) }()
	hostPort := net.JoinHostPort(addr.String(), "53")
	pc, err := net.ListenPacket("udp", hostPort)
	if err != nil {
		return fmt.Errorf("serve names at %s: %w", hostPort, err)
	}
	ln, err := net.Listen("tcp", hostPort)
	if err != nil {
		pc.Close()
		return fmt.Errorf("serve names at %s: %w", hostPort, err)
	}
	a.log.Info("serving names for Docker's resolver", "addr", hostPort)
	a.mu.Lock()
	a.namesAddr = addr
	a.syncNamesRoutes()
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.namesAddr = netip.Addr{}
		a.syncNamesRoutes()
		a.mu.Unlock()
	}()
	return a.dns.ServeShared(ctx, pc, ln, a.sandboxOfAddr)
}

// sandboxOfAddr names the sandbox with an endpoint at ip (one with a
// resolver of its own, whose view of names it gets).
func (a *Agent) sandboxOfAddr(ip netip.Addr) (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, ep := range a.byAddr[ip] {
		if ep.Phase == phaseReady {
			if sb := a.sandboxes[ep.Sandbox]; sb != nil && hasResolver(sb) {
				return sb.Name, true
			}
		}
	}
	return "", false
}
