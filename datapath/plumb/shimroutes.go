package plumb

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
)

// A sandbox of a macvlan or ipvlan L2 network sends what is beyond its
// subnet to the network's gateway, a router on the LAN, so a packet for
// an address this host serves off that LAN (the shared resolver Docker's
// resolver forwards to) never reaches the host. With a host shim the host
// has a foot in the network: each such sandbox gets a route to each of
// those addresses (SetShimRoutes) via the shim's address. Ipvlan L3/L3S
// children need none: the host routes their packets itself. The routes
// carry RouteProtocol, which tells them from the runtime's and the
// user's, so the ones no longer wanted (shim turned off, another list)
// go at the next ensure or Sync of the endpoint.

// RouteProtocol marks the routes fabric makes (the rtnetlink protocol
// field; numbers above 4 are free for routing daemons; `ip route` shows
// "proto 251").
const RouteProtocol = 0xfb

// SetShimRoutes sets the host addresses sandboxes reach through their
// network's host shim (IPv4 only; none by default). Endpoints get them at
// their next ensure or Sync.
func (h *Host) SetShimRoutes(addrs []netip.Addr) { h.shimRoutes = slices.Clone(addrs) }

// shimRoutesOf are the destinations routed via n's shim in its sandboxes:
// the configured ones outside n's subnet, if n has a shim and is not
// routed by the host (ipvlan L3/L3S).
func shimRoutesOf(n datapath.Network, addrs []netip.Addr) map[netip.Addr]bool {
	want := map[netip.Addr]bool{}
	if !n.HostShim.IsValid() || isL3(n) {
		return want
	}
	for _, a := range addrs {
		if a.Is4() && !n.Subnet.Contains(a) {
			want[a] = true
		}
	}
	return want
}

// ensureSandboxShimRoutes makes the sandbox's routes via n's shim through
// link (the endpoint's child) exactly those shimRoutesOf gives. A link
// just created has no routes of fabric's yet: nothing to list.
func ensureSandboxShimRoutes(h *netlink.Handle, link netlink.Link, n datapath.Network, addrs []netip.Addr, created bool) error {
	want := shimRoutesOf(n, addrs)
	idx := link.Attrs().Index
	var routes []netlink.Route
	if !created {
		var err error
		routes, err = RetryDump(func() ([]netlink.Route, error) {
			return h.RouteListFiltered(netlink.FAMILY_V4,
				&netlink.Route{LinkIndex: idx, Table: unix.RT_TABLE_MAIN, Protocol: RouteProtocol},
				netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		})
		if err != nil {
			return fmt.Errorf("list routes via the host shim: %w", err)
		}
	}
	for _, r := range routes {
		if dst, ok := hostRouteDst(r); ok && want[dst] && sameGateway(r.Gw, n.HostShim) {
			delete(want, dst) // in place
			continue
		}
		if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("remove route %s via the host shim: %w", r.Dst, err)
		}
	}
	for a := range want {
		r := &netlink.Route{LinkIndex: idx, Dst: hostNet(a), Gw: n.HostShim.AsSlice(), Table: unix.RT_TABLE_MAIN, Protocol: RouteProtocol}
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("route %s via the host shim %s: %w", a, n.HostShim, err)
		}
	}
	return nil
}

// hostRouteDst is the destination of a route to one IPv4 address.
func hostRouteDst(r netlink.Route) (netip.Addr, bool) {
	if r.Dst == nil {
		return netip.Addr{}, false
	}
	if ones, bits := r.Dst.Mask.Size(); ones != 32 || bits != 32 {
		return netip.Addr{}, false
	}
	a, ok := netip.AddrFromSlice(r.Dst.IP)
	return a.Unmap(), ok
}
