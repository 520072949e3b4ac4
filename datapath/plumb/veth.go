package plumb

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
	fabricns "github.com/fabricnet/fabric/datapath/netns"
)

// sandbox is an open handle on an endpoint's namespace.
type Sandbox struct {
	path string
	ns   netns.NsHandle
	nl   *netlink.Handle
}

// OpenSandbox opens the namespace of ep; one with an expected identity
// (ep.NetNSID) is checked on the open descriptor, so it is that namespace
// every later step works on.
func OpenSandbox(ep datapath.Endpoint) (*Sandbox, error) {
	path := ep.NetNSPath
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open sandbox netns %s: %w", path, err)
	}
	if ep.NetNSID != (fabricns.ID{}) {
		var st unix.Stat_t
		if err := unix.Fstat(int(ns), &st); err != nil {
			ns.Close()
			return nil, fmt.Errorf("stat sandbox netns %s: %w", path, err)
		}
		if got := (fabricns.ID{Dev: st.Dev, Ino: st.Ino}); got != ep.NetNSID {
			ns.Close()
			return nil, Invalidf("sandbox netns %s is namespace %d:%d, not the endpoint's %d:%d; not touching it",
				path, got.Dev, got.Ino, ep.NetNSID.Dev, ep.NetNSID.Ino)
		}
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("netlink handle in sandbox %s: %w", path, err)
	}
	return &Sandbox{path: path, ns: ns, nl: h}, nil
}

// fdPath names the open namespace, for code that enters it by path: the
// namespace checked at open, whatever the original path names by now.
func (s *Sandbox) FDPath() string { return fmt.Sprintf("/proc/self/fd/%d", int(s.ns)) }

// NL is the netlink handle in the sandbox.
func (s *Sandbox) NL() *netlink.Handle { return s.nl }

func (s *Sandbox) Close() {
	s.nl.Close()
	s.ns.Close()
}

// VethSides is what a datapath does with an endpoint's veth pair beyond
// making it: Host readies the host side (a bridge port, or a routed
// link), After runs once the sandbox side is configured (a forwarder may
// route to the sandbox from then on). After may be nil.
type VethSides struct {
	Host  func(host netlink.Link, created bool) error
	After func(sb *Sandbox, host netlink.Link) error
}

// EnsureVeth creates or repairs the endpoint's veth pair: the host side as
// sides.Host wants it, the peer directly inside the sandbox. A pair made
// here is removed again if any later step fails.
func (h *Host) EnsureVeth(n datapath.Network, ep datapath.Endpoint, sides VethSides) (created bool, err error) {
	sb, err := OpenSandbox(ep)
	if err != nil {
		return false, fmt.Errorf("endpoint %s: %w", ep.ID, err)
	}
	defer sb.Close()

	host, peer, err := h.existingVeth(sb, ep)
	if err != nil {
		return false, fmt.Errorf("endpoint %s: %w", ep.ID, err)
	}
	if host == nil {
		if host, peer, err = h.createVeth(sb, n, ep); err != nil {
			return false, fmt.Errorf("endpoint %s: %w", ep.ID, err)
		}
		created = true
		defer func() {
			if err != nil {
				if delErr := h.nl.LinkDel(host); delErr != nil && !IsNotFound(delErr) {
					h.log.Warn("roll back veth", "link", ep.HostIfName, "err", delErr)
				}
			}
		}()
		if err := h.faults.after(h.faults.VethCreated); err != nil {
			return created, err
		}
	}
	if err := sides.Host(host, created); err != nil {
		return created, fmt.Errorf("endpoint %s: host side %s: %w", ep.ID, ep.HostIfName, err)
	}
	if err := sandboxIPv6Off(ep.NetNSPath, peer.Attrs().Name); err != nil {
		return created, fmt.Errorf("endpoint %s: sandbox side %s in %s: %w", ep.ID, ep.IfName, ep.NetNSPath, err)
	}
	if err := configureSandboxLink(sb.nl, peer, ep, ep.MAC, MTUOf(n), n.Gateway, created); err != nil {
		return created, fmt.Errorf("endpoint %s: sandbox side %s in %s: %w", ep.ID, ep.IfName, ep.NetNSPath, err)
	}
	if sides.After != nil {
		if err := sides.After(sb, host); err != nil {
			return created, fmt.Errorf("endpoint %s: %w", ep.ID, err)
		}
	}
	return created, nil
}

// existingVeth returns the endpoint's host veth and its peer in the sandbox
// if both exist and belong together. A host veth whose peer is gone or in
// another namespace (the sandbox was recreated) is deleted so that it can
// be made again.
func (h *Host) existingVeth(sb *Sandbox, ep datapath.Endpoint) (host, peer netlink.Link, err error) {
	host, err = h.nl.LinkByName(ep.HostIfName)
	if IsNotFound(err) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("look up host veth %s: %w", ep.HostIfName, err)
	}
	if ep.Adopted && host.Attrs().Alias == "" && host.Type() == "veth" {
		// The pair the runtime was handed before the namespace existed
		// (no alias yet): it becomes this endpoint's.
		if err := h.nl.LinkSetAlias(host, OwnerAlias(ep.ID)); err != nil {
			return nil, nil, fmt.Errorf("adopt veth %s: %w", ep.HostIfName, err)
		}
		host.Attrs().Alias = OwnerAlias(ep.ID)
	}
	if err := h.Claim(host, ep.ID, HostVethMAC(ep.ID)); err != nil {
		return nil, nil, err
	}
	if host.Type() == "veth" {
		peer, err = sb.nl.LinkByName(ep.IfName)
		if err != nil && !IsNotFound(err) {
			return nil, nil, fmt.Errorf("look up %s in sandbox: %w", ep.IfName, err)
		}
		if err == nil && h.isPeer(sb, host, peer) {
			return host, peer, nil
		}
	}
	h.log.Info("recreating endpoint link whose peer is gone or elsewhere", "link", ep.HostIfName, "endpoint", ep.ID)
	if err := h.nl.LinkDel(host); err != nil && !IsNotFound(err) {
		return nil, nil, fmt.Errorf("delete broken host veth %s: %w", ep.HostIfName, err)
	}
	return nil, nil, nil
}

// isPeer reports whether peer (in the sandbox) is the other end of host.
// Interface indexes are per namespace, so both directions and the peer's
// namespace ID are compared.
func (h *Host) isPeer(sb *Sandbox, host, peer netlink.Link) bool {
	if peer.Type() != "veth" || peer.Attrs().ParentIndex != host.Attrs().Index || host.Attrs().ParentIndex != peer.Attrs().Index {
		return false
	}
	nsid, err := h.nl.GetNetNsIdByFd(int(sb.ns))
	if err != nil {
		return false
	}
	return host.Attrs().NetNsID == nsid
}

// createVeth adds the pair with the peer born inside the sandbox, already
// named, addressed at layer 2 and sized, so the sandbox never sees a
// temporary name.
func (h *Host) createVeth(sb *Sandbox, n datapath.Network, ep datapath.Endpoint) (host, peer netlink.Link, err error) {
	la := netlink.NewLinkAttrs()
	la.Name = ep.HostIfName
	la.HardwareAddr = HostVethMAC(ep.ID)
	la.MTU = MTUOf(n)
	veth := &netlink.Veth{
		LinkAttrs:        la,
		PeerName:         ep.IfName,
		PeerHardwareAddr: ep.MAC,
		PeerNamespace:    netlink.NsFd(sb.ns),
		PeerTxQLen:       -1,
	}
	err = h.nl.LinkAdd(veth)
	if errors.Is(err, unix.EEXIST) {
		// The host name was free, so the sandbox name is taken; a leftover
		// of this endpoint under an old host name may go, nothing else.
		if rmErr := h.removeStalePeer(sb, ep); rmErr != nil {
			return nil, nil, rmErr
		}
		err = h.nl.LinkAdd(veth)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("create veth %s (peer %s in %s): %w", ep.HostIfName, ep.IfName, ep.NetNSPath, err)
	}
	defer func() {
		if err != nil {
			_ = h.nl.LinkDel(veth)
		}
	}()
	if err := h.nl.LinkSetAlias(veth, OwnerAlias(ep.ID)); err != nil {
		return nil, nil, fmt.Errorf("set alias on %s: %w", ep.HostIfName, err)
	}
	veth.Alias = OwnerAlias(ep.ID)
	if err := h.SetHostVethUp(veth); err != nil {
		return nil, nil, err
	}
	veth.Flags |= net.FlagUp
	peer, err = sb.nl.LinkByName(ep.IfName)
	if err != nil {
		return nil, nil, fmt.Errorf("look up new peer %s in sandbox: %w", ep.IfName, err)
	}
	h.log.Debug("created veth", "link", ep.HostIfName, "endpoint", ep.ID)
	return veth, peer, nil
}

func (h *Host) removeStalePeer(sb *Sandbox, ep datapath.Endpoint) error {
	old, err := sb.nl.LinkByName(ep.IfName)
	if err != nil {
		return fmt.Errorf("look up existing %s in sandbox: %w", ep.IfName, err)
	}
	if old.Type() == "veth" {
		if hostEnd, err := h.nl.LinkByIndex(old.Attrs().ParentIndex); err == nil && hostEnd.Attrs().Alias == OwnerAlias(ep.ID) {
			h.log.Info("removing old veth of endpoint", "link", hostEnd.Attrs().Name, "endpoint", ep.ID)
			if err := h.nl.LinkDel(hostEnd); err != nil {
				return fmt.Errorf("delete old veth %s: %w", hostEnd.Attrs().Name, err)
			}
			return nil
		}
	}
	return Invalidf("interface %s already exists in sandbox %s", ep.IfName, ep.NetNSPath)
}

// repairHostMTUUp puts back the MTU and the up state of an existing host
// veth (a new one is made with both).
func (h *Host) RepairHostMTUUp(host netlink.Link, n datapath.Network) error {
	attrs := host.Attrs()
	if want := MTUOf(n); attrs.MTU != want {
		if err := h.nl.LinkSetMTU(host, want); err != nil {
			return fmt.Errorf("set MTU %d: %w", want, err)
		}
	}
	if attrs.Flags&net.FlagUp == 0 {
		return h.SetHostVethUp(host)
	}
	return nil
}

// setHostVethUp turns IPv6 off on a host-side veth, then brings it up.
// Fabric forwards IPv4 only. With IPv6 on, every host veth would add its
// link-local and multicast routes to the host's IPv6 FIB as it comes up,
// and the kernel walks that whole FIB on link events: at 1,000 endpoints
// creating a veth took 735 µs instead of 547 µs with IPv6 off (468 µs at
// 10). The sysctl must be set before the link is up; it is a no-op where
// the kernel has no IPv6.
func (h *Host) SetHostVethUp(host netlink.Link) error {
	name := host.Attrs().Name
	err := h.EnsureHostSysctl("net/ipv6/conf/"+name+"/disable_ipv6", "1")
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("turn IPv6 off on %s: %w", name, err)
	}
	if err := h.nl.LinkSetUp(host); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// DeleteVeth removes the endpoint's host veth, and with it the peer.
//
// For an endpoint whose namespace the caller deletes next
// (ep.NamespaceGoes) it only sets the host side down, which cuts the pair
// off: a veth drops what its peer sends while the peer is down. The kernel
// deletes the pair when the namespace ends, together with the devices of
// every other namespace ending then, instead of waiting here for an RCU
// grace period of its own (27 ms per link on the development VM). The
// deletion event that follows is no drift. Should the namespace outlive
// the call (a process the agent did not start still holds it), the pair
// stays down until a Sync prunes it as a link of no endpoint.
func (h *Host) DeleteVeth(ep datapath.Endpoint) error {
	var (
		link netlink.Link
		err  error
	)
	if ep.HostIfName != "" {
		link, err = h.nl.LinkByName(ep.HostIfName)
	} else {
		link, err = h.nl.LinkByAlias(OwnerAlias(ep.ID))
	}
	if IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up veth of endpoint %s: %w", ep.ID, err)
	}
	if link.Attrs().Alias != OwnerAlias(ep.ID) {
		h.log.Warn("not deleting link owned by someone else", "link", link.Attrs().Name, "alias", link.Attrs().Alias, "endpoint", ep.ID)
		return nil
	}
	h.own.add(link.Attrs().Index)
	if ep.NamespaceGoes {
		if err := h.nl.LinkSetDown(link); err != nil && !IsNotFound(err) {
			h.own.take(link.Attrs().Index)
			return fmt.Errorf("set veth %s down: %w", link.Attrs().Name, err)
		}
		return nil
	}
	if err := h.nl.LinkDel(link); err != nil && !IsNotFound(err) {
		h.own.take(link.Attrs().Index)
		return fmt.Errorf("delete veth %s: %w", link.Attrs().Name, err)
	}
	return nil
}

// FastARP makes an overlay sandbox retry ARP every 100 ms, ten times,
// instead of every second three times. A sandbox that connects to a remote
// endpoint the moment it is created may ask before gossip has brought the
// answer (the VXLAN device's proxy ARP entry, tens of milliseconds later);
// with the kernel's defaults that costs a whole second. It runs inside the
// sandbox's namespace.
func FastARP(ifName string) error {
	dir := "net/ipv4/neigh/" + ifName + "/"
	if err := EnsureSysctl(dir+"retrans_time_ms", "100"); err != nil {
		return err
	}
	return EnsureSysctl(dir+"mcast_solicit", "10")
}

// LinksByName is one dump of the host's links, by name: a repair pass
// compares each endpoint's host veth against it instead of asking for
// each (at 1,000 endpoints a full ensure of each costs a second or more).
func (h *Host) LinksByName() (map[string]netlink.Link, error) {
	links, err := RetryDump(h.nl.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	out := make(map[string]netlink.Link, len(links))
	for _, l := range links {
		out[l.Attrs().Name] = l
	}
	return out, nil
}

// VethIntact reports whether l is ep's host veth as an ensure leaves it:
// fabric's, a veth whose peer lives in another namespace, up, with n's MTU
// and on the bridge with index master (0: on none). A veth and its peer
// go together, so a missing sandbox side shows here too.
func VethIntact(l netlink.Link, n datapath.Network, ep datapath.Endpoint, master int) bool {
	if l == nil || l.Type() != "veth" {
		return false
	}
	a := l.Attrs()
	return a.Alias == OwnerAlias(ep.ID) && a.Flags&net.FlagUp != 0 && a.MTU == MTUOf(n) &&
		a.MasterIndex == master && a.NetNsID >= 0
}

// configureSandboxLink gives an endpoint's interface in its sandbox (a
// veth peer, a macvlan or ipvlan child) its MAC (nil: whatever it has),
// MTU and address, brings it up, and keeps the default route through it
// via gw (invalid: straight out of the device) if ep wants one, or no
// default route through it. A link created just now was born with the
// right name, MAC and MTU and nothing else on it, so only the missing
// parts are added.
func configureSandboxLink(h *netlink.Handle, link netlink.Link, ep datapath.Endpoint, mac net.HardwareAddr, mtu int, gw netip.Addr, created bool) error {
	addr := &net.IPNet{IP: ep.Addr.Addr().AsSlice(), Mask: net.CIDRMask(ep.Addr.Bits(), 32)}
	if created {
		if err := h.AddrAdd(link, &netlink.Addr{IPNet: addr}); err != nil {
			return fmt.Errorf("add address %s: %w", addr, err)
		}
		if err := h.LinkSetUp(link); err != nil {
			return fmt.Errorf("set up: %w", err)
		}
		if ep.DefaultRoute && !ep.Adopted {
			return replaceDefaultRoute(h, link, gw)
		}
		return nil
	}
	a := link.Attrs()
	if mac != nil && !bytes.Equal(a.HardwareAddr, mac) {
		if err := setMAC(h, link, mac); err != nil {
			return err
		}
	}
	if a.MTU != mtu {
		if err := h.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("set MTU %d: %w", mtu, err)
		}
	}
	if err := EnsureOnlyAddr(h, link, addr); err != nil {
		return err
	}
	if !IsUp(link) {
		if err := h.LinkSetUp(link); err != nil {
			return fmt.Errorf("set up: %w", err)
		}
	}
	if ep.Adopted {
		return nil // an adopted endpoint's routes are the runtime's
	}
	return ensureDefaultRoute(h, link, gw, ep.DefaultRoute)
}

func setMAC(h *netlink.Handle, link netlink.Link, mac net.HardwareAddr) error {
	err := h.LinkSetHardwareAddr(link, mac)
	if errors.Is(err, unix.EBUSY) {
		// Some drivers refuse a MAC change while up.
		if err = h.LinkSetDown(link); err == nil {
			if err = h.LinkSetHardwareAddr(link, mac); err == nil {
				err = h.LinkSetUp(link)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("set MAC %s: %w", mac, err)
	}
	return nil
}

// ensureDefaultRoute makes the main table's default route go through
// link, via gw or (gw invalid) straight out of the device, when want is
// set, and removes default routes through link otherwise.
func ensureDefaultRoute(h *netlink.Handle, link netlink.Link, gw netip.Addr, want bool) error {
	routes, err := RetryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	idx := link.Attrs().Index
	for _, r := range routes {
		if !isDefaultRoute(r) || r.LinkIndex != idx {
			continue
		}
		if want && r.Priority == 0 && sameGateway(r.Gw, gw) {
			return nil
		}
		if !want {
			if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("remove default route through %s: %w", link.Attrs().Name, err)
			}
		}
	}
	if !want {
		return nil
	}
	return replaceDefaultRoute(h, link, gw)
}

func sameGateway(have net.IP, want netip.Addr) bool {
	if !want.IsValid() {
		return len(have) == 0
	}
	return net.IP(want.AsSlice()).Equal(have)
}

func replaceDefaultRoute(h *netlink.Handle, link netlink.Link, gw netip.Addr) error {
	r := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Table:     unix.RT_TABLE_MAIN,
	}
	if gw.IsValid() {
		r.Gw = gw.AsSlice()
	} else {
		r.Scope = netlink.SCOPE_LINK
	}
	if err := h.RouteReplace(r); err != nil {
		if gw.IsValid() {
			return fmt.Errorf("default route via %s: %w", gw, err)
		}
		return fmt.Errorf("default route through %s: %w", link.Attrs().Name, err)
	}
	return nil
}

func isDefaultRoute(r netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}
