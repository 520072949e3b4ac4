package kernel

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// An overlay network in the bridge model is a bridge network (same bridge,
// same nftables rules) plus one fixed-VNI VXLAN device, fvx<VNI>, enslaved
// to the bridge. The device neither learns nor floods: every remote
// endpoint is a permanent FDB entry (its MAC -> its node) and a permanent
// neighbour entry (its address -> its MAC) on the device, and with proxy
// ARP on the device answers the sandboxes' ARP requests for remote
// endpoints from that neighbour table, so no ARP crosses the underlay and
// anything unknown is dropped at the device.
//
// A flow-based (collect_md) VXLAN device, which the eBPF datapath uses,
// cannot share a UDP port with fixed-VNI ones in one namespace, so the
// bridge model removes a leftover of it (flowVXLANName) and the forwarder
// mode keeps it.

// flowVXLANName is the eBPF datapath's flow-based VXLAN device.
const flowVXLANName = "fabric-vx"

// overlayNet is what the datapath remembers of an ensured overlay network:
// the remotes last set, put back if its VXLAN device has to be recreated.
type overlayNet struct {
	device  string
	vni     uint32
	remotes []datapath.Remote
}

// vxlanName is at most 11 characters: "fvx" and up to 8 digits.
func vxlanName(n datapath.Network) string { return "fvx" + strconv.FormatUint(uint64(n.VNI), 10) }

func vxlanAlias(networkID string) string { return datapath.OwnerPrefix + "vxlan:" + networkID }

// vxlanMAC derives the device's MAC from the network ID: it identifies a
// device a crash left without its alias.
func vxlanMAC(networkID string) net.HardwareAddr {
	return plumb.DerivedMAC("fabric-vxlan:" + networkID)
}

func isOverlay(n datapath.Network) bool { return n.Driver == datapath.DriverOverlay }

func (d *Datapath) tunnelPort() int {
	if d.tunnel.Port == 0 {
		return datapath.DefaultTunnelPort
	}
	return int(d.tunnel.Port)
}

// checkTunnel refuses an overlay network on a datapath that was given no
// usable tunnel address; nothing is made for it then.
func (d *Datapath) checkTunnel(n datapath.Network) error {
	if !d.tunnel.Local.IsValid() {
		return plumb.Invalidf("network %s: overlay networks need the host's tunnel address (kernel.Options.Tunnel.Local), which is not set", n.ID)
	}
	if !d.tunnel.Local.Is4() {
		return plumb.Invalidf("network %s: tunnel address %s must be IPv4", n.ID, d.tunnel.Local)
	}
	if d.tunnel.Device != "" {
		if err := plumb.ValidIfName(d.tunnel.Device); err != nil {
			return plumb.Invalidf("network %s: tunnel device: %v", n.ID, err)
		}
	}
	return nil
}

// wantVXLAN is the device ensureVXLAN makes for n.
func (d *Datapath) wantVXLAN(n datapath.Network) (*netlink.Vxlan, error) {
	la := netlink.NewLinkAttrs()
	la.Name = vxlanName(n)
	la.MTU = plumb.MTUOf(n)
	la.HardwareAddr = vxlanMAC(n.ID)
	v := &netlink.Vxlan{
		LinkAttrs: la,
		VxlanId:   int(n.VNI),
		SrcAddr:   d.tunnel.Local.AsSlice(),
		Port:      d.tunnelPort(),
		Learning:  false,
		Proxy:     true,
	}
	if d.tunnel.Device != "" {
		dev, err := d.nl.LinkByName(d.tunnel.Device)
		if err != nil {
			return nil, fmt.Errorf("network %s: look up tunnel device %s: %w", n.ID, d.tunnel.Device, err)
		}
		v.VtepDevIndex = dev.Attrs().Index
	}
	return v, nil
}

// vxlanDiff names the first attribute of link that differs from want and
// can only be changed by recreating the device; "" if none does.
func vxlanDiff(link netlink.Link, want *netlink.Vxlan) string {
	v, ok := link.(*netlink.Vxlan)
	switch {
	case !ok:
		return "kind " + link.Type()
	case v.FlowBased:
		return "flow-based"
	case v.VxlanId != want.VxlanId:
		return fmt.Sprintf("VNI %d", v.VxlanId)
	case v.Port != want.Port:
		return fmt.Sprintf("port %d", v.Port)
	case !v.SrcAddr.Equal(want.SrcAddr):
		return fmt.Sprintf("local %s", v.SrcAddr)
	case v.VtepDevIndex != want.VtepDevIndex:
		return fmt.Sprintf("device index %d", v.VtepDevIndex)
	case v.Group != nil && !v.Group.IsUnspecified():
		return fmt.Sprintf("group %s", v.Group)
	case v.Learning:
		return "learning on"
	case !v.Proxy:
		return "proxy ARP off"
	case v.L2miss || v.L3miss:
		return "l2miss/l3miss on"
	}
	return ""
}

// ensureOverlay creates or repairs n's VXLAN device on bridge br and, when
// the device is new, puts back the remotes last set for n.
func (d *Datapath) ensureOverlay(n datapath.Network, br netlink.Link) (created bool, err error) {
	link, created, err := d.ensureVXLAN(n, br)
	if err != nil {
		return created, err
	}
	o := d.overlays[n.ID]
	if created && o != nil && len(o.remotes) > 0 {
		if err := d.programRemotes(n, link, o.remotes); err != nil {
			if delErr := d.nl.LinkDel(link); delErr != nil && !plumb.IsNotFound(delErr) {
				d.log.Warn("roll back VXLAN device", "link", link.Attrs().Name, "err", delErr)
			}
			return created, err
		}
	}
	if o == nil {
		o = &overlayNet{}
		d.overlays[n.ID] = o
	}
	o.device, o.vni = vxlanName(n), n.VNI
	return created, nil
}

// ensureVXLAN makes n's device match wantVXLAN: a device with the wrong
// VNI, port, local address or flags is recreated (its FDB goes with it),
// MTU, MAC, master and state are fixed in place, and a correct device is
// not touched.
func (d *Datapath) ensureVXLAN(n datapath.Network, br netlink.Link) (_ netlink.Link, created bool, err error) {
	want, err := d.wantVXLAN(n)
	if err != nil {
		return nil, false, err
	}
	name := want.Name
	link, err := d.nl.LinkByName(name)
	switch {
	case plumb.IsNotFound(err):
		link = nil
	case err != nil:
		return nil, false, fmt.Errorf("network %s: look up VXLAN device %s: %w", n.ID, name, err)
	default:
		if err := d.host.Claim(link, "vxlan:"+n.ID, vxlanMAC(n.ID)); err != nil {
			return nil, false, fmt.Errorf("network %s: %w", n.ID, err)
		}
		if diff := vxlanDiff(link, want); diff != "" {
			d.log.Info("replacing VXLAN device", "link", name, "differs", diff, "network", n.ID)
			if err := d.nl.LinkDel(link); err != nil && !plumb.IsNotFound(err) {
				return nil, false, fmt.Errorf("network %s: delete outdated VXLAN device %s: %w", n.ID, name, err)
			}
			link = nil
		}
	}
	if link == nil {
		if link, err = d.createVXLAN(n, want); err != nil {
			return nil, false, err
		}
		created = true
		defer func() {
			if err != nil {
				if delErr := d.nl.LinkDel(link); delErr != nil && !plumb.IsNotFound(delErr) {
					d.log.Warn("roll back VXLAN device", "link", name, "err", delErr)
				}
			}
		}()
	}
	a := link.Attrs()
	if a.MTU != want.MTU {
		if err := d.nl.LinkSetMTU(link, want.MTU); err != nil {
			return link, created, fmt.Errorf("network %s: set MTU %d on VXLAN device %s: %w", n.ID, want.MTU, name, err)
		}
	}
	if !slices.Equal(a.HardwareAddr, want.HardwareAddr) {
		if err := d.nl.LinkSetHardwareAddr(link, want.HardwareAddr); err != nil {
			return link, created, fmt.Errorf("network %s: set MAC on VXLAN device %s: %w", n.ID, name, err)
		}
	}
	if a.MasterIndex != br.Attrs().Index {
		if err := d.nl.LinkSetMaster(link, br); err != nil {
			return link, created, fmt.Errorf("network %s: attach VXLAN device %s to bridge %s: %w", n.ID, name, n.Bridge, err)
		}
	}
	if !plumb.IsUp(link) {
		if err := d.nl.LinkSetUp(link); err != nil {
			if errors.Is(err, unix.EADDRINUSE) {
				return link, created, fmt.Errorf("network %s: set VXLAN device %s up: UDP port %d is taken, by a flow-based VXLAN device (the eBPF datapath's %s?) or another program: %w",
					n.ID, name, want.Port, flowVXLANName, err)
			}
			return link, created, fmt.Errorf("network %s: set VXLAN device %s up: %w", n.ID, name, err)
		}
	}
	return link, created, nil
}

// createVXLAN adds the device down and marked; ensureVXLAN attaches it
// and sets it up. A device of n under another name (the network's VNI
// changed) goes first.
func (d *Datapath) createVXLAN(n datapath.Network, want *netlink.Vxlan) (netlink.Link, error) {
	if err := d.deleteOtherVXLANs(n, want.Name); err != nil {
		return nil, err
	}
	if err := d.nl.LinkAdd(want); err != nil {
		return nil, fmt.Errorf("network %s: create VXLAN device %s (VNI %d, port %d): %w", n.ID, want.Name, n.VNI, want.Port, err)
	}
	made, err := plumb.MarkNew(d.nl, want.Name, vxlanAlias(n.ID))
	if err != nil {
		_ = d.nl.LinkDel(want)
		return nil, fmt.Errorf("network %s: set up new VXLAN device %s: %w", n.ID, want.Name, err)
	}
	d.log.Info("created VXLAN device", "link", want.Name, "vni", n.VNI, "port", want.Port, "local", d.tunnel.Local, "network", n.ID)
	return made, nil
}

// deleteOtherVXLANs removes devices marked as n's under a name other than
// keep. It dumps the links, so it runs only when a device is created.
func (d *Datapath) deleteOtherVXLANs(n datapath.Network, keep string) error {
	links, err := plumb.RetryDump(d.nl.LinkList)
	if err != nil {
		return fmt.Errorf("network %s: list links: %w", n.ID, err)
	}
	for _, l := range links {
		if a := l.Attrs(); a.Alias == vxlanAlias(n.ID) && a.Name != keep {
			d.log.Info("deleting VXLAN device of the network's old VNI", "link", a.Name, "network", n.ID)
			if err := d.nl.LinkDel(l); err != nil && !plumb.IsNotFound(err) {
				return fmt.Errorf("network %s: delete old VXLAN device %s: %w", n.ID, a.Name, err)
			}
		}
	}
	return nil
}

// ownVXLAN returns n's VXLAN device, or nil if there is none.
func (d *Datapath) ownVXLAN(n datapath.Network) (netlink.Link, error) {
	link, err := plumb.OwnLink(d.nl, vxlanName(n), vxlanAlias(n.ID))
	if err != nil {
		return nil, fmt.Errorf("network %s: look up VXLAN device: %w", n.ID, err)
	}
	return link, nil
}

// deleteVXLAN removes n's VXLAN device (its FDB and neighbours go with
// it); a missing one, or a link under that name that is not n's, is left.
// The remotes remembered for n stay: the caller forgets n if it is gone.
func (d *Datapath) deleteVXLAN(n datapath.Network) error {
	if n.VNI == 0 || n.VNI > plumb.MaxVNI {
		return nil
	}
	link, err := d.ownVXLAN(n)
	if link == nil || err != nil {
		return err
	}
	if err := d.nl.LinkDel(link); err != nil && !plumb.IsNotFound(err) {
		return fmt.Errorf("network %s: delete VXLAN device %s: %w", n.ID, link.Attrs().Name, err)
	}
	d.log.Info("deleted VXLAN device", "link", link.Attrs().Name, "network", n.ID)
	return nil
}

// removeFlowLeftover deletes the eBPF datapath's flow-based VXLAN device,
// which would hold the tunnel port against the fixed-VNI devices. Only a
// flow-based VXLAN device fabric marked is removed.
func (d *Datapath) removeFlowLeftover() error {
	link, err := d.nl.LinkByName(flowVXLANName)
	if plumb.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up %s: %w", flowVXLANName, err)
	}
	v, ok := link.(*netlink.Vxlan)
	if !ok || !v.FlowBased || !strings.HasPrefix(v.Alias, "fabric") {
		d.log.Debug("leaving link that is not the eBPF datapath's VXLAN device", "link", flowVXLANName, "type", link.Type(), "alias", link.Attrs().Alias)
		return nil
	}
	d.log.Info("removing the eBPF datapath's flow-based VXLAN device: it would hold the tunnel port", "link", flowVXLANName)
	if err := d.nl.LinkDel(link); err != nil && !plumb.IsNotFound(err) {
		return fmt.Errorf("delete %s: %w", flowVXLANName, err)
	}
	return nil
}

// usableRemotes is FilterRemotes for this host, with what it skipped
// logged and counted once per entry.
func (d *Datapath) usableRemotes(n datapath.Network, remotes []datapath.Remote) []datapath.Remote {
	keep, skipped := datapath.FilterRemotes(n, d.tunnel.Local, remotes)
	d.skips.Note(d.log, n.ID, skipped)
	return keep
}

// SetRemotes replaces the remote endpoints of overlay network n: its
// VXLAN device's FDB and neighbour entries become exactly remotes, and
// the input chain accepts VXLAN from exactly them. Unusable entries (see
// datapath.FilterRemotes) are skipped, logged once and counted; the rest
// are programmed.
func (d *Datapath) SetRemotes(ctx context.Context, n datapath.Network, remotes []datapath.Remote) error {
	if err := plumb.ValidateNetwork(n); err != nil {
		return err
	}
	if !isOverlay(n) {
		return plumb.Invalidf("network %s: remotes need an overlay network, not %q", n.ID, n.Driver)
	}
	remotes = d.usableRemotes(n, remotes)
	return d.locked(func() error {
		if err := d.setRemotes(n, remotes); err != nil {
			return err
		}
		return d.setPeers(n, remotes)
	})
}

// setPeers makes the tunnel_peers set allow exactly remotes for n,
// rebuilding the table if that changes it.
func (d *Datapath) setPeers(n datapath.Network, remotes []datapath.Remote) error {
	want := peersOf(n, remotes)
	_, restored := d.state.peers[restoredPeers(n.VNI)]
	if have, ok := d.state.peers[n.ID]; ok && slices.Equal(have, want) && !d.dirty && !restored {
		return nil
	}
	delete(d.state.peers, restoredPeers(n.VNI))
	d.state.peers[n.ID] = want
	return d.applyRuleset()
}

// setRemotes programs validated remotes and remembers them.
func (d *Datapath) setRemotes(n datapath.Network, remotes []datapath.Remote) error {
	link, err := d.ownVXLAN(n)
	if err != nil {
		return err
	}
	if link == nil {
		return fmt.Errorf("network %s: VXLAN device %s does not exist; ensure the network first", n.ID, vxlanName(n))
	}
	if err := d.programRemotes(n, link, remotes); err != nil {
		return err
	}
	o := d.overlays[n.ID]
	if o == nil {
		o = &overlayNet{device: vxlanName(n), vni: n.VNI}
		d.overlays[n.ID] = o
	}
	o.remotes = slices.Clone(remotes)
	return nil
}

// fdbDst is one remote of a VXLAN FDB entry.
type fdbDst struct {
	node      netip.Addr
	permanent bool
}

// programRemotes makes the device's FDB and neighbour entries exactly
// remotes. Entries are added or replaced before stale ones go (neighbours
// before the FDB entries they point at), so a remote that stays is
// reachable throughout.
func (d *Datapath) programRemotes(n datapath.Network, link netlink.Link, remotes []datapath.Remote) error {
	wantFDB := make(map[string]netip.Addr, len(remotes))
	wantNeigh := make(map[netip.Addr]net.HardwareAddr, len(remotes))
	for _, r := range remotes {
		wantFDB[string(r.MAC)] = r.Node
		wantNeigh[r.Addr] = r.MAC
	}
	stale, err := d.programFDB(n, link, wantFDB)
	if err != nil {
		return err
	}
	if err := d.programNeighbours(n, link, wantNeigh); err != nil {
		return err
	}
	for _, e := range stale {
		if err := d.nl.NeighDel(e); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("network %s: remove stale FDB entry %s -> %s on %s: %w", n.ID, e.HardwareAddr, e.IP, link.Attrs().Name, err)
		}
	}
	return nil
}

// programFDB adds or replaces the device's FDB entries (MAC -> node) that
// differ from want, and returns the stale ones, to delete once the
// neighbours no longer point at them.
func (d *Datapath) programFDB(n datapath.Network, link netlink.Link, want map[string]netip.Addr) ([]*netlink.Neigh, error) {
	idx, name := link.Attrs().Index, link.Attrs().Name
	fdb, err := plumb.RetryDump(func() ([]netlink.Neigh, error) { return d.nl.NeighList(idx, unix.AF_BRIDGE) })
	if err != nil {
		return nil, fmt.Errorf("network %s: list FDB of %s: %w", n.ID, name, err)
	}
	have := map[string][]fdbDst{}
	for _, e := range fdb {
		// Only the device's own entries: the bridge reports its entries
		// for the port (NTF_MASTER) in the same dump.
		if e.LinkIndex != idx || e.Flags&netlink.NTF_SELF == 0 || e.Flags&netlink.NTF_MASTER != 0 || len(e.HardwareAddr) != 6 {
			continue
		}
		node, ok := netip.AddrFromSlice(e.IP.To4())
		if !ok {
			continue // no IPv4 destination: not an entry fabric makes
		}
		have[string(e.HardwareAddr)] = append(have[string(e.HardwareAddr)], fdbDst{node: node, permanent: e.State&netlink.NUD_PERMANENT != 0})
	}
	fdbEntry := func(mac string, node netip.Addr) *netlink.Neigh {
		return &netlink.Neigh{
			LinkIndex:    idx,
			Family:       unix.AF_BRIDGE,
			Flags:        netlink.NTF_SELF,
			State:        netlink.NUD_PERMANENT,
			HardwareAddr: net.HardwareAddr(mac),
			IP:           node.AsSlice(),
		}
	}
	var stale []*netlink.Neigh
	for mac, node := range want {
		dsts := have[mac]
		if len(dsts) == 1 && dsts[0].node == node && dsts[0].permanent {
			continue
		}
		// Replace changes the entry's first destination; others go below.
		if err := d.nl.NeighSet(fdbEntry(mac, node)); err != nil {
			return nil, fmt.Errorf("network %s: FDB entry %s -> %s on %s: %w", n.ID, net.HardwareAddr(mac), node, name, err)
		}
		if d.programmed(n.ID, func(r datapath.Remote) bool { return string(r.MAC) == mac && r.Node == node }) {
			d.repaired(datapath.RepairForward, fmt.Sprintf("%s fdb %s -> %s", name, net.HardwareAddr(mac), node))
		}
		for _, dst := range dsts {
			if dst.node != node {
				stale = append(stale, fdbEntry(mac, dst.node))
			}
		}
	}
	for mac := range have {
		if _, ok := want[mac]; !ok {
			// 0.0.0.0 deletes the whole entry, every destination.
			stale = append(stale, fdbEntry(mac, netip.IPv4Unspecified()))
		}
	}
	return stale, nil
}

// programNeighbours makes the device's neighbour entries (address -> MAC,
// answered by its proxy ARP) exactly want.
func (d *Datapath) programNeighbours(n datapath.Network, link netlink.Link, want map[netip.Addr]net.HardwareAddr) error {
	idx, name := link.Attrs().Index, link.Attrs().Name
	neighs, err := plumb.RetryDump(func() ([]netlink.Neigh, error) { return d.nl.NeighList(idx, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("network %s: list neighbours of %s: %w", n.ID, name, err)
	}
	done := map[netip.Addr]bool{}
	var stale []netlink.Neigh
	for _, e := range neighs {
		a, ok := netip.AddrFromSlice(e.IP.To4())
		if !ok || e.LinkIndex != idx {
			continue
		}
		mac, wanted := want[a]
		switch {
		case !wanted:
			stale = append(stale, e)
		case slices.Equal(e.HardwareAddr, mac) && e.State == netlink.NUD_PERMANENT:
			done[a] = true
		}
	}
	for a, mac := range want {
		if done[a] {
			continue
		}
		err := d.nl.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT, IP: a.AsSlice(), HardwareAddr: mac})
		if err != nil {
			return fmt.Errorf("network %s: neighbour %s -> %s on %s: %w", n.ID, a, mac, name, err)
		}
		if d.programmed(n.ID, func(r datapath.Remote) bool { return r.Addr == a && slices.Equal(r.MAC, mac) }) {
			d.repaired(datapath.RepairForward, fmt.Sprintf("%s neighbour %s -> %s", name, a, mac))
		}
	}
	for _, e := range stale {
		if err := d.nl.NeighDel(&e); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("network %s: remove stale neighbour %s on %s: %w", n.ID, e.IP, name, err)
		}
	}
	return nil
}

// programmed reports whether a remote of network id that match accepts
// was set on the device before (so that its entry missing now is drift).
func (d *Datapath) programmed(id string, match func(datapath.Remote) bool) bool {
	o := d.overlays[id]
	return o != nil && slices.ContainsFunc(o.remotes, match)
}

// overlayDetails describes the overlay networks for Status.
func (d *Datapath) overlayDetails() []string {
	ids := slices.Sorted(maps.Keys(d.overlays))
	var out []string
	for _, id := range ids {
		o := d.overlays[id]
		out = append(out, fmt.Sprintf("overlay %s: %s (VNI %d, port %d), %d remotes", id, o.device, o.vni, d.tunnelPort(), len(o.remotes)))
	}
	return out
}
