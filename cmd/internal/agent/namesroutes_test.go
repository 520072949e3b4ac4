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
	l := newNamesRoutesLab(t, "p3", "p3s", "p2")
	ctx := context.Background()
	l.create("l3", "p3", "l3", "10.203.0.0/24")
	// A route an agent killed earlier left on p2 (its L3 network was
	// removed since): gone once names are served again.
	l.in(func() error {
		p2, err := netlink.LinkByName("p2")
		if err != nil {
			return err
		}
		return netlink.RouteAppend(namesRoute(l.dns, p2.Attrs().Index))
	})
	l.setServed(l.dns)
	l.create("l3s", "p3s", "l3s", "10.204.0.0/24")
	l.create("l2", "p2", "l2", "10.205.0.0/24")
	if got := l.boundLocal(); !slices.Equal(got, []string{"p3", "p3s"}) {
		t.Fatalf("parents whose bound lookup finds %s local: %v, want p3 and p3s", l.dns, got)
	}
	if !l.hostLookupOnLo() {
		t.Error("the host's own lookup of the resolver's address no longer finds lo's route")
	}
	// The periodic check of the parents keeps them (no duplicates).
	l.a.checkLANNetworks(ctx)
	l.setServed(l.dns)
	if n := countNamesRoutes(t, l.nsPath, l.dns); n != 2 {
		t.Errorf("%d routes to %s of fabric's after another sync, want 2", n, l.dns)
	}

	l.in(func() error { return l.a.RemoveNetwork(ctx, "l3") })
	if got := l.boundLocal(); !slices.Equal(got, []string{"p3s"}) {
		t.Errorf("after removing the network on p3: %v local, want p3s only", got)
	}
	l.setServed(netip.Addr{})
	if got := l.boundLocal(); len(got) != 0 {
		t.Errorf("names no longer served, yet %v still route %s locally", got, l.dns)
	}
	if n := countNamesRoutes(t, l.nsPath, l.dns); n != 0 {
		t.Errorf("%d routes of fabric's to %s left after names stopped", n, l.dns)
	}
}

// namesRoutesLab is an agent (fake datapath) in a namespace of its own,
// where the shared resolver's address is on lo and veth pairs stand in for
// ipvlan parents (the kernel may lack dummy and ipvlan; the route lookup
// is the point).
type namesRoutesLab struct {
	t       *testing.T
	nsPath  string
	dns     netip.Addr
	parents []string
	a       *Agent
}

func newNamesRoutesLab(t *testing.T, parents ...string) *namesRoutesLab {
	netnstest.RequireRoot(t)
	_, nsPath := netnstest.New(t, "fnr")
	l := &namesRoutesLab{t: t, nsPath: nsPath, dns: netip.MustParseAddr("169.254.53.53"), parents: parents}
	host := newFakeHost()
	l.in(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(l.dns, 32)), Scope: unix.RT_SCOPE_HOST}); err != nil {
			return err
		}
		for _, p := range parents {
			if err := addUpVethPair(p, p+"x"); err != nil {
				return err
			}
			host.links[p] = HostLink{Name: p, Up: true, MTU: 1500}
		}
		// The LAN's route via the first parent, as a host on it has.
		first, _ := netlink.LinkByName(parents[0])
		return netlink.AddrAdd(first, &netlink.Addr{IPNet: prefixNet(netip.MustParsePrefix("10.203.0.250/24"))})
	})
	l.a = newTestAgentOn(t, t.TempDir(), newFake(), host)
	t.Cleanup(func() { l.a.Close() })
	return l
}

// addUpVethPair makes a veth pair with both ends up, in the calling
// thread's namespace.
func addUpVethPair(name, peer string) error {
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer}); err != nil {
		return fmt.Errorf("add veth %s: %w", name, err)
	}
	for _, n := range []string{name, peer} {
		l, err := netlink.LinkByName(n)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
	}
	return nil
}

// in runs fn in the lab's namespace.
func (l *namesRoutesLab) in(fn func() error) {
	l.t.Helper()
	if err := netns.Do(l.nsPath, fn); err != nil {
		l.t.Fatal(err)
	}
}

func (l *namesRoutesLab) create(name, parent, mode, subnet string) {
	l.t.Helper()
	l.in(func() error {
		_, err := l.a.CreateNetwork(context.Background(), api.NetworkCreate{Name: name, Driver: api.DriverIPvlan, Subnet: subnet,
			Options: map[string]string{"parent": parent, "ipvlan_mode": mode}})
		return err
	})
}

// setServed sets the address names are served on and syncs the routes.
func (l *namesRoutesLab) setServed(addr netip.Addr) {
	l.t.Helper()
	l.in(func() error {
		l.a.mu.Lock()
		defer l.a.mu.Unlock()
		l.a.namesAddr = addr
		l.a.syncNamesRoutes()
		return nil
	})
}

// boundLocal lists the parents whose bound lookup finds the resolver's
// address local.
func (l *namesRoutesLab) boundLocal() (local []string) {
	l.t.Helper()
	l.in(func() error {
		for _, p := range l.parents {
			rs, err := netlink.RouteGetWithOptions(l.dns.AsSlice(), &netlink.RouteGetOptions{Oif: p})
			if err == nil && len(rs) == 1 && rs[0].Type == unix.RTN_LOCAL {
				local = append(local, p)
			}
		}
		return nil
	})
	slices.Sort(local)
	return local
}

// hostLookupOnLo reports whether an unbound lookup of the resolver's
// address finds lo's local route.
func (l *namesRoutesLab) hostLookupOnLo() bool {
	l.t.Helper()
	ok := false
	l.in(func() error {
		lo, _ := netlink.LinkByName("lo")
		rs, err := netlink.RouteGet(l.dns.AsSlice())
		ok = err == nil && len(rs) == 1 && rs[0].Type == unix.RTN_LOCAL && rs[0].LinkIndex == lo.Attrs().Index
		return nil
	})
	return ok
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
