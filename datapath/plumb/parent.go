package plumb

import (
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/datapath"
)

// macvlan and ipvlan networks have no bridge and no nftables rules: their
// endpoints are children of a host interface (the parent) and sit directly
// on the parent's LAN with their own addresses, so there is nothing to
// masquerade or isolate on the host. What the datapath keeps on the host
// is only the parent itself when it is an 802.1q sub-interface fabric made
// (vlan.go) and the optional host shim (shim.go); the children live in the
// sandboxes (macvlan.go).
//
// MTU: a child can never be larger than its parent (the kernel refuses
// it), so an endpoint gets the parent's MTU, or the network's MTU when that
// is set and smaller. A network MTU above the parent's is clamped rather
// than refused, because the parent's MTU belongs to the host and may change
// under a running network; MTU 0 follows the parent.

// UsesParent reports whether n's endpoints hang off a parent interface.
func UsesParent(n datapath.Network) bool {
	return n.Driver == datapath.DriverMacvlan || n.Driver == datapath.DriverIPvlan
}

// childMTU is the MTU of n's endpoints and shim on parent.
func childMTU(n datapath.Network, parent netlink.Link) int {
	p := parent.Attrs().MTU
	if n.MTU > 0 && n.MTU < p {
		return n.MTU
	}
	return p
}

// childKind is the link kind of n's endpoints and host shim.
func childKind(n datapath.Network) string {
	if n.Driver == datapath.DriverIPvlan {
		return "ipvlan"
	}
	return "macvlan"
}

var macvlanModes = map[string]netlink.MacvlanMode{
	"":         netlink.MACVLAN_MODE_BRIDGE,
	"bridge":   netlink.MACVLAN_MODE_BRIDGE,
	"private":  netlink.MACVLAN_MODE_PRIVATE,
	"vepa":     netlink.MACVLAN_MODE_VEPA,
	"passthru": netlink.MACVLAN_MODE_PASSTHRU,
}

var ipvlanModes = map[string]netlink.IPVlanMode{
	"":    netlink.IPVLAN_MODE_L2,
	"l2":  netlink.IPVLAN_MODE_L2,
	"l3":  netlink.IPVLAN_MODE_L3,
	"l3s": netlink.IPVLAN_MODE_L3S,
}

// isPassthru: the child takes over the parent (its MAC, promiscuity) and
// is the only child the parent can have.
func isPassthru(n datapath.Network) bool {
	return n.Driver == datapath.DriverMacvlan && macvlanModes[n.Mode] == netlink.MACVLAN_MODE_PASSTHRU
}

// isL3 is true for ipvlan modes in which children do no ARP: the host's
// routing table, not a next hop on the LAN, decides where packets go.
func isL3(n datapath.Network) bool {
	if n.Driver != datapath.DriverIPvlan {
		return false
	}
	m := ipvlanModes[n.Mode]
	return m == netlink.IPVLAN_MODE_L3 || m == netlink.IPVLAN_MODE_L3S
}

// SplitVLAN parses a parent name of the form IFACE.VID. ok is false for a
// name that is not of that form (no dot, or not digits after the last one);
// such a parent must exist, fabric never creates it.
func SplitVLAN(name string) (base string, vid int, ok bool) {
	i := strings.LastIndexByte(name, '.')
	if i < 0 || i == len(name)-1 {
		return "", 0, false
	}
	digits := name[i+1:]
	for _, r := range digits {
		if r < '0' || r > '9' {
			return "", 0, false
		}
	}
	vid, err := strconv.Atoi(digits)
	if err != nil {
		return "", 0, false
	}
	return name[:i], vid, true
}

func validateParentNetwork(n datapath.Network) error {
	if err := ValidIfName(n.Parent); err != nil {
		return Invalidf("network %s: parent: %v", n.ID, err)
	}
	if base, vid, ok := SplitVLAN(n.Parent); ok {
		digits := n.Parent[len(base)+1:]
		if base == "" || vid < 1 || vid > 4094 || digits[0] == '0' {
			return Invalidf("network %s: parent %s: a VLAN sub-interface is IFACE.VID with VID 1 to 4094 written without leading zeros", n.ID, n.Parent)
		}
	}
	switch n.Driver {
	case datapath.DriverMacvlan:
		if _, ok := macvlanModes[n.Mode]; !ok {
			return Invalidf("network %s: macvlan mode %q must be bridge, private, vepa or passthru", n.ID, n.Mode)
		}
	case datapath.DriverIPvlan:
		if _, ok := ipvlanModes[n.Mode]; !ok {
			return Invalidf("network %s: ipvlan mode %q must be l2, l3 or l3s", n.ID, n.Mode)
		}
	}
	if n.Internal {
		return Invalidf("network %s: a %s network cannot be internal: its endpoints are on the parent's LAN, the host does not forward their traffic", n.ID, n.Driver)
	}
	if err := validateAddressing(n); err != nil {
		return err
	}
	if err := ValidIfName(ShimName(n.ID)); err != nil {
		return Invalidf("network %s: the ID must be usable in an interface name: %v", n.ID, err)
	}
	if !n.HostShim.IsValid() {
		return nil
	}
	s := n.HostShim
	if !s.Is4() || !n.Subnet.Contains(s) || s == n.Gateway || isNetOrBroadcast(n.Subnet, s) {
		return Invalidf("network %s: host shim address %s must be a host address in %s other than the gateway (the endpoints answer it on-link)", n.ID, s, n.Subnet)
	}
	if n.Driver == datapath.DriverMacvlan && macvlanModes[n.Mode] == netlink.MACVLAN_MODE_PRIVATE {
		return Invalidf("network %s: a host shim cannot reach private-mode macvlan endpoints (private children never talk to each other); use bridge mode", n.ID)
	}
	if isPassthru(n) {
		return Invalidf("network %s: a passthru parent takes a single child, so there is no room for a host shim", n.ID)
	}
	return nil
}

// parentMissingf returns an error wrapping ErrParentMissing.
func parentMissingf(n datapath.Network, format string, args ...any) error {
	return fmt.Errorf("network %s: %s: %w", n.ID, fmt.Sprintf(format, args...), datapath.ErrParentMissing)
}

// ensureParentNetwork makes the host side of a macvlan/ipvlan network:
// the parent (creating a VLAN sub-interface if asked to) and the host shim
// or its absence. A VLAN made here is removed again if the shim fails.
func (h *Host) EnsureLANNetwork(n datapath.Network) (err error) {
	h.parentNets[n.ID] = n
	p := h.parents()
	parent, created, err := p.ensure(n)
	if err != nil {
		return err
	}
	if created {
		defer func() {
			if err != nil {
				if delErr := p.deleteVLAN(n); delErr != nil {
					h.log.Warn("roll back VLAN sub-interface", "link", n.Parent, "err", delErr)
				}
			}
		}()
	}
	// The guard changes before a shim comes and after one goes, so no
	// shim ever takes a packet to the host's INPUT unguarded.
	if !n.HostShim.IsValid() {
		if err := h.deleteShim(n); err != nil {
			return err
		}
		return h.ensureGuardOf(n)
	}
	if err := h.ensureGuardOf(n); err != nil {
		return err
	}
	return h.ensureShim(n, parent)
}

func (h *Host) ensureGuardOf(n datapath.Network) error {
	if err := h.ensureShimGuard(); err != nil {
		return fmt.Errorf("network %s: guard of fabric's host ports: %w", n.ID, err)
	}
	return nil
}

// deleteParentNetwork removes the shim and, if fabric made it for this
// network, the VLAN sub-interface (the kernel deletes the children on it).
func (h *Host) DeleteLANNetwork(n datapath.Network) error {
	if err := h.deleteShim(n); err != nil {
		return err
	}
	if err := h.parents().deleteVLAN(n); err != nil {
		return err
	}
	delete(h.parentNets, n.ID)
	return h.ensureGuardOf(n)
}

// parentWarnings checks the parent of every macvlan/ipvlan network by name
// (no dumps), so status shows a vanished parent before the next ensure.
func (h *Host) LANWarnings() []string {
	ids := slices.Sorted(maps.Keys(h.parentNets))
	var out []string
	for _, id := range ids {
		n := h.parentNets[id]
		if _, err := h.parents().lookup(n); err != nil {
			out = append(out, fmt.Sprintf("%s network %s (%s): endpoints disconnected: %v", n.Driver, n.Name, n.Parent, err))
		}
	}
	return out
}

// IsUp reports the administrative state, which is what the kernel needs
// to forward through a link (carrier is the LAN's business).
func IsUp(l netlink.Link) bool { return l.Attrs().Flags&net.FlagUp != 0 }
