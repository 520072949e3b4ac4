package kernel

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// Address resolution without floods.
//
// On a bridge every broadcast reaches every port, and every sandbox's
// stack processes it; so does a unicast frame to a MAC the bridge has not
// learnt yet. A new endpoint's first exchange with the host (the host's
// ARP request for it; then the echo to a MAC nobody has seen) cost one
// such flood each: ~5 ms of set-up time at 1,000 sandboxes. The datapath
// knows both ends, so it writes them down instead:
//
//   - on the host, a permanent neighbour entry on the bridge for the
//     endpoint's address, with the MAC the anti-spoofing table holds the
//     port to (so no sandbox can answer for another: the entry is not
//     updated by ARP, and a frame from a forged MAC is dropped anyway);
//   - on the bridge, a static FDB entry for that MAC on the endpoint's
//     port (it goes with the port);
//   - in the sandbox (not an adopted one: its neighbours are the
//     runtime's), a permanent entry for the gateway: the bridge's MAC,
//     derived from the network ID, so it never changes under it.
//
// Permanent entries are not counted against the (global) gc_thresh3 limit
// of the neighbour table, unlike learnt ones. Sandboxes still resolve
// each other by ARP. The host's entries are removed with the endpoint and
// reconciled by Sync (syncNeighbours).

// ensurePortFDB pins ep's MAC to its bridge port host.
func (d *Datapath) ensurePortFDB(host netlink.Link, mac net.HardwareAddr) error {
	e := &netlink.Neigh{
		LinkIndex: host.Attrs().Index, Family: unix.AF_BRIDGE,
		Flags: netlink.NTF_MASTER, State: netlink.NUD_NOARP, HardwareAddr: mac,
	}
	if err := d.nl.NeighSet(e); err != nil {
		return fmt.Errorf("static FDB entry %s on %s: %w", mac, host.Attrs().Name, err)
	}
	return nil
}

// hostNeighbour is the permanent entry on bridge index br for addr.
func hostNeighbour(br int, addr netip.Addr, mac net.HardwareAddr) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex: br, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
		IP: addr.AsSlice(), HardwareAddr: mac,
	}
}

// ensureHostNeighbour writes the host's entry for ep on bridge index br,
// with the MAC the anti-spoofing element (spoofEnsure, before) holds. prev
// is the element before this ensure, if any: when ep's address changed,
// the entry for its old address goes (unless another endpoint's MAC holds
// it by now).
func (d *Datapath) ensureHostNeighbour(br int, ep datapath.Endpoint, prev *spoofElem) error {
	e, ok := d.spoof[ep.HostIfName]
	if !ok {
		return nil
	}
	if err := d.nl.NeighSet(hostNeighbour(br, e.addr, e.mac[:])); err != nil {
		return fmt.Errorf("endpoint %s: neighbour entry %s: %w", ep.ID, e.addr, err)
	}
	if prev != nil && prev.addr != e.addr {
		if err := d.dropHostNeighbour(br, prev.addr, prev.mac[:]); err != nil {
			return fmt.Errorf("endpoint %s: old address: %w", ep.ID, err)
		}
	}
	return nil
}

// deleteHostNeighbour removes the host's entry for ep from n's bridge if
// it is the endpoint's: it holds ep's MAC or, when the delete carries none
// (the agent deletes by ID and address), the MAC of ep's anti-spoofing
// element, the one the entry was written with; that tells it from the
// entry of a newer endpoint that took the address since. Any MAC when
// neither is known.
func (d *Datapath) deleteHostNeighbour(n datapath.Network, ep datapath.Endpoint) error {
	if !ep.Addr.IsValid() || n.Bridge == "" {
		return nil // Sync removes what is left
	}
	br, err := d.nl.LinkByName(n.Bridge)
	if plumb.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up bridge %s: %w", n.Bridge, err)
	}
	mac := ep.MAC
	if e, ok := d.spoof[ep.HostIfName]; mac == nil && ok {
		mac = e.mac[:]
	}
	if err := d.dropHostNeighbour(br.Attrs().Index, ep.Addr.Addr(), mac); err != nil {
		return fmt.Errorf("endpoint %s: %w", ep.ID, err)
	}
	return nil
}

// dropHostNeighbour removes the permanent entry for addr on bridge index
// br if it holds mac (any MAC when mac is nil).
func (d *Datapath) dropHostNeighbour(br int, addr netip.Addr, mac net.HardwareAddr) error {
	neighs, err := plumb.RetryDump(func() ([]netlink.Neigh, error) {
		return d.nl.NeighList(br, unix.AF_INET)
	})
	if err != nil {
		return fmt.Errorf("neighbours of bridge %d: %w", br, err)
	}
	for _, e := range neighs {
		if !e.IP.Equal(addr.AsSlice()) || e.State != netlink.NUD_PERMANENT {
			continue
		}
		if mac != nil && !bytes.Equal(e.HardwareAddr, mac) {
			continue
		}
		if err := d.nl.NeighDel(&e); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove neighbour entry %s: %w", addr, err)
		}
	}
	return nil
}

// ensureGatewayNeighbour writes the sandbox's entry for n's gateway on
// link (the endpoint's interface in sb).
func ensureGatewayNeighbour(sb *plumb.Sandbox, link netlink.Link, n datapath.Network) error {
	if !n.Gateway.IsValid() || link == nil {
		return nil
	}
	e := &netlink.Neigh{
		LinkIndex: link.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
		IP: n.Gateway.AsSlice(), HardwareAddr: bridgeMAC(n.ID),
	}
	if err := sb.NL().NeighSet(e); err != nil {
		return fmt.Errorf("gateway neighbour entry %s in sandbox: %w", n.Gateway, err)
	}
	return nil
}

// syncNeighbours makes the host's permanent entries on each bridge of the
// plan exactly those of its endpoints (as the anti-spoofing elements
// hold them): missing or changed ones are repairs, ones no endpoint
// names are stale. One dump per bridge.
func (d *Datapath) syncNeighbours(p *syncPlan) []error {
	want := map[string]map[netip.Addr]net.HardwareAddr{} // by network ID
	for _, ep := range p.BridgeEndpoints() {
		e, ok := d.spoof[ep.HostIfName]
		if !ok || e.addr != ep.Addr.Addr().Unmap() {
			continue
		}
		if want[ep.NetworkID] == nil {
			want[ep.NetworkID] = map[netip.Addr]net.HardwareAddr{}
		}
		want[ep.NetworkID][e.addr] = e.mac[:]
	}
	var errs []error
	for _, id := range p.IDs {
		n := p.Nets[id]
		if plumb.UsesParent(n) || p.Failed[id] {
			continue
		}
		if err := d.syncBridgeNeighbours(n, want[id]); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

func (d *Datapath) syncBridgeNeighbours(n datapath.Network, want map[netip.Addr]net.HardwareAddr) error {
	br, err := d.nl.LinkByName(n.Bridge)
	if err != nil {
		return fmt.Errorf("network %s: look up bridge %s: %w", n.ID, n.Bridge, err)
	}
	idx := br.Attrs().Index
	neighs, err := plumb.RetryDump(func() ([]netlink.Neigh, error) { return d.nl.NeighList(idx, unix.AF_INET) })
	if err != nil {
		return fmt.Errorf("network %s: neighbours of %s: %w", n.ID, n.Bridge, err)
	}
	have := make(map[netip.Addr]netlink.Neigh, len(neighs))
	var errs []error
	for _, e := range neighs {
		a, ok := netip.AddrFromSlice(e.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		if _, wanted := want[a]; wanted || e.State != netlink.NUD_PERMANENT {
			have[a] = e
			continue
		}
		if err := d.nl.NeighDel(&e); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("network %s: remove stale neighbour entry %s: %w", n.ID, a, err))
			continue
		}
		d.repaired(datapath.RepairStale, fmt.Sprintf("%s neighbour %s", n.Bridge, a))
	}
	for a, mac := range want {
		if e, ok := have[a]; ok && e.State == netlink.NUD_PERMANENT && bytes.Equal(e.HardwareAddr, mac) {
			continue
		}
		if err := d.nl.NeighSet(hostNeighbour(idx, a, mac)); err != nil {
			errs = append(errs, fmt.Errorf("network %s: neighbour entry %s: %w", n.ID, a, err))
			continue
		}
		d.repaired(datapath.RepairNeigh, fmt.Sprintf("%s neighbour %s -> %s", n.Bridge, a, mac))
	}
	return errors.Join(errs...)
}
