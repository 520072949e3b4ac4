package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// TestNamesRoutesOnL3Parents: while the shared resolver's address is
// served (on lo), a route lookup bound to the parent of an ipvlan L3 or
// L3S network (the one the kernel's ipvlan driver makes for a child's
// packet to a host address) finds it local; before, it found no route or
// the LAN's, and the query left the host. An L2 parent is left alone
// (its children's frames reach the host's stack as the parent's own);
// the route goes with its network, when names stop being served and
// (left by a killed agent) at the next start, and the host's own lookups
// still find lo's route first.
func TestNamesRoutesOnL3Parents(t *testing.T) {
	netnstest.RequireRoot(t)
	_, nsPath := netnstest.New(t, "fnr")
	in := func(fn func() error) {
		t.Helper()
		if err := netns.Do(nsPath, fn); err != nil {
			t.Fatal(err)
		}
	}
	dns := netip.MustParseAddr("169.254.53.53")
	host := newFakeHost()
	parents := []string{"p3", "p3s", "p2"}
	in(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(dns, 32)), Scope: unix.RT_SCOPE_HOST}); err != nil {
			return err
		}
		for _, p := range parents {
			// veth pairs stand in for the parents (the kernel may lack
			// dummy and ipvlan; the route lookup is the point).
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p}, PeerName: p + "x"}); err != nil {
				return fmt.Errorf("add veth %s: %w", p, err)
			}
			for _, name := range []string{p, p + "x"} {
				l, err := netlink.LinkByName(name)
				if err != nil {
					return err
				}
				if err := netlink.LinkSetUp(l); err != nil {
					return err
				}
			}
			host.links[p] = HostLink{Name: p, Up: true, MTU: 1500}
		}
		// The LAN's route via the parent, as a host on it has.
		l3, _ := netlink.LinkByName("p3")
		return netlink.AddrAdd(l3, &netlink.Addr{IPNet: prefixNet(netip.MustParsePrefix("10.203.0.250/24"))})
	})
	a := newTestAgentOn(t, t.TempDir(), newFake(), host)
	defer a.Close()
	ctx := context.Background()
	create := func(name, parent, mode, subnet string) {
		in(func() error {
			_, err := a.CreateNetwork(ctx, api.NetworkCreate{Name: name, Driver: api.DriverIPvlan, Subnet: subnet,
				Options: map[string]string{"parent": parent, "ipvlan_mode": mode}})
			return err
		})
	}
	setServed := func(addr netip.Addr) {
		in(func() error {
			a.mu.Lock()
			defer a.mu.Unlock()
			a.namesAddr = addr
			a.syncNamesRoutes()
			return nil
		})
	}
	// boundLocal: the lookup bound to each parent that finds the
	// resolver's address local.
	boundLocal := func() (local []string) {
		in(func() error {
			for _, p := range parents {
				rs, err := netlink.RouteGetWithOptions(dns.AsSlice(), &netlink.RouteGetOptions{Oif: p})
				if err == nil && len(rs) == 1 && rs[0].Type == unix.RTN_LOCAL {
					local = append(local, p)
				}
			}
			return nil
		})
		slices.Sort(local)
		return local
	}
	hostLookupOnLo := func() bool {
		ok := false
		in(func() error {
			lo, _ := netlink.LinkByName("lo")
			rs, err := netlink.RouteGet(dns.AsSlice())
			ok = err == nil && len(rs) == 1 && rs[0].Type == unix.RTN_LOCAL && rs[0].LinkIndex == lo.Attrs().Index
			return nil
		})
		return ok
	}

	create("l3", "p3", "l3", "10.203.0.0/24")
	// A route an agent killed earlier left on p2 (its L3 network was
	// removed since): gone once names are served again.
	in(func() error {
		p2, err := netlink.LinkByName("p2")
		if err != nil {
			return err
		}
		return netlink.RouteAppend(namesRoute(dns, p2.Attrs().Index))
	})
	setServed(dns)
	create("l3s", "p3s", "l3s", "10.204.0.0/24")
	create("l2", "p2", "l2", "10.205.0.0/24")
	if got := boundLocal(); !slices.Equal(got, []string{"p3", "p3s"}) {
		t.Fatalf("parents whose bound lookup finds %s local: %v, want p3 and p3s", dns, got)
	}
	if !hostLookupOnLo() {
		t.Error("the host's own lookup of the resolver's address no longer finds lo's route")
	}
	// The periodic check of the parents keeps them (no duplicates).
	a.checkLANNetworks(ctx)
	in(func() error { a.mu.Lock(); defer a.mu.Unlock(); a.syncNamesRoutes(); return nil })
	if n := countNamesRoutes(t, nsPath, dns); n != 2 {
		t.Errorf("%d routes to %s of fabric's after another sync, want 2", n, dns)
	}

	in(func() error { return a.RemoveNetwork(ctx, "l3") })
	if got := boundLocal(); !slices.Equal(got, []string{"p3s"}) {
		t.Errorf("after removing the network on p3: %v local, want p3s only", got)
	}
	setServed(netip.Addr{})
	if got := boundLocal(); len(got) != 0 {
		t.Errorf("names no longer served, yet %v still route %s locally", got, dns)
	}
	if n := countNamesRoutes(t, nsPath, dns); n != 0 {
		t.Errorf("%d routes of fabric's to %s left after names stopped", n, dns)
	}
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// countNamesRoutes counts fabric's local routes to addr in the namespace.
func countNamesRoutes(t *testing.T, nsPath string, addr netip.Addr) int {
	t.Helper()
	h := netnstest.Handle(t, nsPath)
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_LOCAL, Dst: prefixNet(netip.PrefixFrom(addr, 32))},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range rs {
		if r.Priority == namesRouteMetric {
			n++
		}
	}
	return n
}
