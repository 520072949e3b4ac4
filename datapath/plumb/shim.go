package plumb

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
)

// The kernel keeps a macvlan parent and its children apart: frames the
// host sends out of the parent go to the wire and never come back to the
// children, so a host cannot reach its own macvlan sandboxes (ipvlan
// behaves the same). The host shim is a sibling child on the host side,
// fs-<network ID>, with the network's HostShim address as a /32, and one
// /32 route per endpoint through it: host traffic to an endpoint then goes
// child to child inside the parent's macvlan/ipvlan port.
//
// A macvlan shim is in bridge mode, so it reaches bridge-mode endpoints
// (vepa endpoints only through a switch that reflects frames back; private
// and passthru networks refuse a shim at validation). An ipvlan shim is an
// ipvlan child in the network's own mode: ipvlan's mode belongs to the
// parent's port, not to the child, so a shim in another mode would switch
// every endpoint on the parent to it; and a parent cannot carry macvlan and
// ipvlan children at once.

func ShimName(networkID string) string { return "fs-" + idPrefix(networkID) }

func ShimAlias(networkID string) string { return datapath.OwnerPrefix + "shim:" + networkID }

// shimMAC derives a macvlan shim's MAC from the network ID: stable for the
// neighbours' ARP caches, and it identifies a shim left without its alias.
func shimMAC(networkID string) net.HardwareAddr { return DerivedMAC("fabric-shim:" + networkID) }

// ensureShim creates or repairs n's host shim on parent. A shim made here
// is removed again if a later step fails.
func (h *Host) ensureShim(n datapath.Network, parent netlink.Link) (err error) {
	name := ShimName(n.ID)
	link, err := h.nl.LinkByName(name)
	switch {
	case IsNotFound(err):
		link = nil
	case err != nil:
		return fmt.Errorf("network %s: look up host shim %s: %w", n.ID, name, err)
	default:
		if err := h.claimShim(link, n, parent); err != nil {
			return err
		}
		if !shimMatches(link, n, parent) {
			h.log.Info("replacing host shim", "link", name, "type", link.Type(), "network", n.ID)
			if err := h.nl.LinkDel(link); err != nil && !IsNotFound(err) {
				return fmt.Errorf("network %s: delete outdated host shim %s: %w", n.ID, name, err)
			}
			link = nil
		}
	}
	if link == nil {
		if link, err = h.createShim(n, parent); err != nil {
			return err
		}
		defer func() {
			if err != nil {
				if delErr := h.nl.LinkDel(link); delErr != nil && !IsNotFound(delErr) {
					h.log.Warn("roll back host shim", "link", name, "err", delErr)
				}
			}
		}()
	}
	a := link.Attrs()
	if mtu := childMTU(n, parent); a.MTU != mtu {
		if err := h.nl.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("network %s: set MTU %d on host shim %s: %w", n.ID, mtu, name, err)
		}
	}
	if err := EnsureOnlyAddr(h.nl, link, hostNet(n.HostShim)); err != nil {
		return fmt.Errorf("network %s: host shim %s: %w", n.ID, name, err)
	}
	if !IsUp(link) {
		if err := h.nl.LinkSetUp(link); err != nil {
			return fmt.Errorf("network %s: set host shim %s up: %w", n.ID, name, err)
		}
	}
	return nil
}

// claimShim accepts the shim fabric made for n, also one a crash left
// without alias (recognised by kind, parent and, for macvlan, the derived
// MAC; an ipvlan child has the parent's MAC, so its name has to do).
func (h *Host) claimShim(link netlink.Link, n datapath.Network, parent netlink.Link) error {
	a := link.Attrs()
	switch {
	case a.Alias == ShimAlias(n.ID):
		return nil
	case a.Alias == "" && link.Type() == childKind(n) && a.ParentIndex == parent.Attrs().Index &&
		(link.Type() == "ipvlan" || bytes.Equal(a.HardwareAddr, shimMAC(n.ID))):
		if err := h.nl.LinkSetAlias(link, ShimAlias(n.ID)); err != nil {
			return fmt.Errorf("network %s: set alias on host shim %s: %w", n.ID, a.Name, err)
		}
		a.Alias = ShimAlias(n.ID)
		return nil
	default:
		return Invalidf("network %s: link %s exists and is not this network's host shim (alias %q); remove it", n.ID, a.Name, a.Alias)
	}
}

// shimMatches reports whether an existing shim has the wanted kind,
// parent and mode.
func shimMatches(link netlink.Link, n datapath.Network, parent netlink.Link) bool {
	if link.Attrs().ParentIndex != parent.Attrs().Index || link.Attrs().NetNsID >= 0 {
		return false
	}
	switch l := link.(type) {
	case *netlink.Macvlan:
		return n.Driver == datapath.DriverMacvlan && l.Mode == netlink.MACVLAN_MODE_BRIDGE
	case *netlink.IPVlan:
		return n.Driver == datapath.DriverIPvlan && l.Mode == ipvlanModes[n.Mode]
	}
	return false
}

// createShim adds the shim down and marked; ensureShim addresses it and
// sets it up.
func (h *Host) createShim(n datapath.Network, parent netlink.Link) (netlink.Link, error) {
	name := ShimName(n.ID)
	la := netlink.NewLinkAttrs()
	la.Name = name
	la.ParentIndex = parent.Attrs().Index
	la.MTU = childMTU(n, parent)
	var link netlink.Link
	if n.Driver == datapath.DriverIPvlan {
		link = &netlink.IPVlan{LinkAttrs: la, Mode: ipvlanModes[n.Mode]}
	} else {
		la.HardwareAddr = shimMAC(n.ID)
		link = &netlink.Macvlan{LinkAttrs: la, Mode: netlink.MACVLAN_MODE_BRIDGE}
	}
	if err := h.nl.LinkAdd(link); err != nil {
		return nil, childAddError(n, n.Parent, fmt.Sprintf("host shim %s", name), err)
	}
	made, err := MarkNew(h.nl, name, ShimAlias(n.ID))
	if err != nil {
		if made != nil {
			_ = h.nl.LinkDel(made)
		}
		return nil, fmt.Errorf("network %s: set up new host shim %s: %w", n.ID, name, err)
	}
	h.log.Info("created host shim", "link", name, "addr", n.HostShim, "network", n.ID)
	return made, nil
}

// deleteShim removes n's shim (its routes go with it); a missing one, or
// a link under that name that is not n's shim, is left alone.
func (h *Host) deleteShim(n datapath.Network) error {
	link, err := h.ownShim(n)
	if link == nil || err != nil {
		return err
	}
	if err := h.nl.LinkDel(link); err != nil && !IsNotFound(err) {
		return fmt.Errorf("network %s: delete host shim %s: %w", n.ID, link.Attrs().Name, err)
	}
	h.log.Info("deleted host shim", "link", link.Attrs().Name, "network", n.ID)
	return nil
}

// ownShim returns n's shim, or nil if there is none.
func (h *Host) ownShim(n datapath.Network) (netlink.Link, error) {
	link, err := OwnLink(h.nl, ShimName(n.ID), ShimAlias(n.ID))
	if err != nil {
		return nil, fmt.Errorf("network %s: look up host shim: %w", n.ID, err)
	}
	return link, nil
}

// shimRoute is the host route to one endpoint through the shim.
func shimRoute(shim netlink.Link, addr netip.Addr) *netlink.Route {
	return &netlink.Route{
		LinkIndex: shim.Attrs().Index,
		Dst:       hostNet(addr),
		Scope:     netlink.SCOPE_LINK,
		Table:     unix.RT_TABLE_MAIN,
	}
}

// ensureShimRoute routes ep's address through n's shim. Replacing an
// identical route is a no-op in the kernel, so this costs one request and
// no dump.
func (h *Host) ensureShimRoute(n datapath.Network, ep datapath.Endpoint) error {
	if !n.HostShim.IsValid() {
		return nil // no shim, and its routes went with it
	}
	shim, err := h.ownShim(n)
	if err != nil {
		return err
	}
	if shim == nil {
		return fmt.Errorf("endpoint %s: host shim of network %s does not exist; ensure the network first", ep.ID, n.ID)
	}
	if err := h.nl.RouteReplace(shimRoute(shim, ep.Addr.Addr())); err != nil {
		return fmt.Errorf("endpoint %s: route %s via host shim: %w", ep.ID, ep.Addr.Addr(), err)
	}
	return nil
}

func (h *Host) deleteShimRoute(n datapath.Network, ep datapath.Endpoint) error {
	shim, err := h.ownShim(n)
	if shim == nil || err != nil {
		return err
	}
	err = h.nl.RouteDel(shimRoute(shim, ep.Addr.Addr()))
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("endpoint %s: remove route via host shim: %w", ep.ID, err)
	}
	return nil
}

// pruneShimRoutes removes routes through n's shim to addresses that are no
// endpoint of n any more (endpoints dropped from the state without
// DeleteEndpoint). Sync only: it dumps the shim's routes.
func (h *Host) PruneShimRoutes(n datapath.Network, want map[netip.Addr]bool) error {
	shim, err := h.ownShim(n)
	if shim == nil || err != nil {
		return err
	}
	routes, err := RetryDump(func() ([]netlink.Route, error) {
		return h.nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{LinkIndex: shim.Attrs().Index, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return fmt.Errorf("network %s: list host shim routes: %w", n.ID, err)
	}
	var errs []error
	for _, r := range routes {
		addr, ok := hostRouteDst(r)
		if !ok || want[addr] {
			continue
		}
		h.log.Info("pruning host shim route of endpoint not in state", "dst", addr, "network", n.ID)
		if err := h.nl.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("network %s: remove stale host shim route %s: %w", n.ID, addr, err))
		}
	}
	return errors.Join(errs...)
}

func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}
}
