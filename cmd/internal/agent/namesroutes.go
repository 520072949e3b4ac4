package agent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// The shared resolver's address (ServeNamesAt) is on the host's lo. An
// ipvlan L3/L3S child's packet for an address no child has is routed in
// the host's namespace, but the kernel's ipvlan driver looks that route up
// bound to the parent (output interface = parent), and a lookup bound to
// an interface skips every route whose device is another one: the local
// route of an address on lo too. So the child's query left through the
// parent for the LAN (a host address on the parent itself answers, one on
// lo never did). A second local route for the resolver's address, with
// the parent as device, is what that bound lookup finds; it is put in the
// local table at a metric of its own, behind lo's (metric 0), so that
// every other lookup still finds lo's first and nothing else changes.

// namesRouteMetric is the metric of fabric's local routes to the shared
// resolver on ipvlan L3/L3S parents (it also tells them apart from
// anyone else's).
const namesRouteMetric = 5353

// syncNamesRoutes makes the local routes to the shared resolver's address
// exactly one per parent of an ipvlan L3/L3S network, none when names are
// not served (with mu held). A parent that does not exist (yet) gets its
// route when the parents are checked again (checkLANNetworks); a route
// goes with its device when the kernel deletes it; one left by an agent
// killed after its network was removed goes at the next sync.
func (a *Agent) syncNamesRoutes() {
	if !a.namesAddr.IsValid() && !a.namesRouted {
		return // nothing served, nothing routed by this agent: no netlink call
	}
	want := map[int]string{}
	if a.namesAddr.IsValid() {
		for _, n := range a.networks {
			if n.Driver != api.DriverIPvlan || (n.Mode != "l3" && n.Mode != "l3s") || n.Phase == phaseRemoving {
				continue
			}
			link, err := netlink.LinkByName(n.Parent)
			if err != nil {
				continue // a missing parent: the network is unhealthy, said elsewhere
			}
			want[link.Attrs().Index] = n.Parent
		}
	}
	if err := ensureNamesRoutes(a.namesAddr, want); err != nil {
		a.log.Warn("ipvlan L3/L3S sandboxes may get no answer from the shared resolver", "err", err)
	}
	a.namesRouted = a.namesAddr.IsValid()
}

// ensureNamesRoutes adds the local route to addr (if valid) on every link
// of want and deletes every other local route of fabric's (its metric).
func ensureNamesRoutes(addr netip.Addr, want map[int]string) error {
	var errs []error
	for index, name := range want {
		// Appended, not replaced: a replace would take the place of
		// another parent's route (same destination, metric and table).
		if err := netlink.RouteAppend(namesRoute(addr, index)); err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("route %s to this host on %s: %w", addr, name, err))
		}
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_LOCAL}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("list local routes: %w", err))...)
	}
	for _, r := range routes {
		if r.Priority != namesRouteMetric || r.Type != unix.RTN_LOCAL || r.Dst == nil {
			continue
		}
		dst, _ := netip.AddrFromSlice(r.Dst.IP)
		if _, ok := want[r.LinkIndex]; ok && dst.Unmap() == addr {
			continue
		}
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("delete route %s on link %d: %w", r.Dst, r.LinkIndex, err))
		}
	}
	return errors.Join(errs...)
}

// namesRoute is the local route to addr bound to the link at index.
func namesRoute(addr netip.Addr, index int) *netlink.Route {
	bits := addr.BitLen()
	return &netlink.Route{
		LinkIndex: index,
		Dst:       &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(bits, bits)},
		Type:      unix.RTN_LOCAL,
		Table:     unix.RT_TABLE_LOCAL,
		Scope:     netlink.SCOPE_HOST,
		Priority:  namesRouteMetric,
	}
}

// warnNamesUnreachable logs, while names are served, that n's sandboxes
// will get no answers from the shared resolver (with mu held): the host
// sends to its own macvlan/ipvlan children only through the host shim.
// With a shim, the routed ipvlan modes bring a child's packet for a host
// address to the host, and an L2 child has a route to the resolver via
// the shim (the datapath's ShimRoutes).
func (a *Agent) warnNamesUnreachable(n *networkRec) {
	if !a.namesAddr.IsValid() || !lanDriver(n.Driver) || n.HostShim.IsValid() {
		return
	}
	a.log.Warn("sandboxes on this network get no answers from the shared resolver (Docker's resolver forwards there): the host reaches its own macvlan and ipvlan children only through a host shim; create the network with -o host_shim=true",
		"network", n.Name, "driver", n.Driver, "resolver", a.namesAddr)
}
