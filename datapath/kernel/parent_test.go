package kernel

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/fabricnet/fabric/datapath/plumb"
)

func TestParentMissingOrDownCreatesNothing(t *testing.T) {
	t.Parallel()
	sw := newSwitch(t)
	h1 := sw.host()
	s1, p1 := h1.sandbox()
	shim := netip.MustParseAddr("10.90.20.254")
	for _, tc := range []struct {
		parent, down string // down: set this link down first
		want         string // the error names it
	}{
		{parent: "nope0", want: "nope0"},
		{parent: "nope0.10", want: "nope0"},
		{parent: "eth1", down: "eth1", want: "eth1 is down"},
		// The base is checked before anything is made, also where the
		// kernel could not make VLANs at all.
		{parent: "eth1.10", down: "eth1", want: "base eth1 of VLAN parent eth1.10 is down"},
	} {
		if tc.down != "" {
			netnstest.Run(t, h1.hostName, "ip", "link", "set", tc.down, "down")
		}
		n := parentNet("pm", datapath.DriverMacvlan, tc.parent, "", "10.90.20.0/24")
		n.HostShim = shim
		err := h1.ensureNetworkErr(n)
		if !errors.Is(err, datapath.ErrParentMissing) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parent %s: EnsureNetwork: %v, want ErrParentMissing naming %q", tc.parent, err, tc.want)
		}
		err = h1.dp.EnsureEndpoint(ctx, n, endpoint("e1", n, p1, "eth0", "", 2, true))
		if !errors.Is(err, datapath.ErrParentMissing) {
			t.Errorf("parent %s: EnsureEndpoint: %v, want ErrParentMissing", tc.parent, err)
		}
		st := h1.dp.Status(ctx)
		if w := strings.Join(st.Warnings, ";"); !strings.Contains(w, "macvlan network pm ("+tc.parent+")") || !strings.Contains(w, tc.want) {
			t.Errorf("parent %s: Status warnings %q", tc.parent, st.Warnings)
		}
		if tc.down != "" {
			netnstest.Run(t, h1.hostName, "ip", "link", "set", tc.down, "up")
		}
	}
	if extra := h1.linksBeyondLAN(); len(extra) != 0 {
		t.Errorf("links created for a network without parent: %v", extra)
	}
	if out := netnstest.Run(t, s1, "ip", "-o", "link", "show"); strings.Count(out, "\n") != 1 {
		t.Errorf("sandbox got links: %s", out)
	}
}

// TestParentRemovedAndRestored: the physical parent goes away (the kernel
// deletes the children and the shim with it), status says so, Sync
// carries on with the other networks, and when it comes back EnsureNetwork
// and EnsureEndpoint restore everything.
func TestParentRemovedAndRestored(t *testing.T) {
	t.Parallel()
	sw := newSwitch(t)
	h1, h2 := sw.host(), sw.host()
	n := parentNet("mvr", datapath.DriverMacvlan, "eth1", "", "10.90.21.0/24")
	n.HostShim = netip.MustParseAddr("10.90.21.254")
	n2 := n
	n2.HostShim = netip.Addr{}
	br := network("brr", "br-r", "10.89.21.0/24", false)
	h1.ensureNetwork(n)
	h1.ensureNetwork(br)
	h2.ensureNetwork(n2)
	j1, jb := h1.join(n, "e1", "", 2), h1.join(br, "eb", "vhb", 2)
	s1, p1, e1 := j1.name, j1.path, j1.ep
	sb, eb := jb.name, jb.ep
	s2 := h2.join(n2, "e2", "", 3).name
	mustPing(t, s1, "10.90.21.3")

	if err := h1.hostNL.LinkDel(h1.link("eth1")); err != nil {
		t.Fatal(err)
	}
	if !childGone(t, p1, "eth0") || !h1.linkGone("fs-mvr") {
		t.Fatal("the kernel kept children of a deleted parent")
	}
	st := h1.dp.Status(ctx)
	if w := strings.Join(st.Warnings, ";"); !strings.Contains(w, "macvlan network mvr (eth1)") || !strings.Contains(w, "does not exist") {
		t.Errorf("Status warnings while the parent is gone: %q", st.Warnings)
	}
	if err := h1.dp.EnsureEndpoint(ctx, n, e1); !errors.Is(err, datapath.ErrParentMissing) {
		t.Errorf("EnsureEndpoint without parent: %v", err)
	}

	// Sync reports the missing parent once and still serves the rest: the
	// bridge endpoint's deleted veth comes back.
	if err := h1.hostNL.LinkDel(h1.link("vhb")); err != nil {
		t.Fatal(err)
	}
	state := datapath.State{Networks: []datapath.Network{n, br}, Endpoints: []datapath.Endpoint{e1, eb}}
	err := h1.dp.Sync(ctx, state)
	if !errors.Is(err, datapath.ErrParentMissing) || strings.Count(err.Error(), "parent interface missing") != 1 {
		t.Errorf("Sync without parent: %v, want one ErrParentMissing", err)
	}
	h1.link("vhb")
	mustPing(t, sb, "10.89.21.1")
	if st := h1.dp.Status(ctx); !strings.Contains(strings.Join(st.Warnings, ";"), "last sync:") {
		t.Errorf("Status after a failed Sync: %+v", st)
	}

	sw.plug(h1, "eth1")
	h1.ensureNetwork(n)
	h1.ensureEndpoint(n, e1)
	mustPing(t, s1, "10.90.21.3")
	mustPing(t, s2, "10.90.21.2")
	mustPing(t, h1.hostName, "10.90.21.2")
	if err := h1.dp.Sync(ctx, state); err != nil {
		t.Fatalf("Sync with the parent back: %v", err)
	}
	if st := h1.dp.Status(ctx); len(st.Warnings) != 0 {
		t.Errorf("warnings after restore: %q", st.Warnings)
	}
}

// TestSyncRestoresAfterParentReturns: Sync alone (the agent's periodic
// reconcile) brings endpoints back once the parent is there again.
func TestSyncRestoresAfterParentReturns(t *testing.T) {
	t.Parallel()
	sw := newSwitch(t)
	h1, h2 := sw.host(), sw.host()
	n := parentNet("mvs", datapath.DriverMacvlan, "eth1", "", "10.90.22.0/24")
	h2.ensureNetwork(n)
	s1, p1 := h1.sandbox()
	h2.join(n, "e2", "", 3)
	netnstest.Run(t, h1.hostName, "ip", "link", "set", "eth1", "down")
	state := datapath.State{Networks: []datapath.Network{n}, Endpoints: []datapath.Endpoint{endpoint("e1", n, p1, "eth0", "", 2, true)}}
	if err := h1.dp.Sync(ctx, state); !errors.Is(err, datapath.ErrParentMissing) {
		t.Fatalf("Sync with the parent down: %v", err)
	}
	if !childGone(t, p1, "eth0") {
		t.Error("endpoint of a network with a down parent was made anyway")
	}
	netnstest.Run(t, h1.hostName, "ip", "link", "set", "eth1", "up")
	if err := h1.dp.Sync(ctx, state); err != nil {
		t.Fatalf("Sync with the parent up: %v", err)
	}
	mustPing(t, s1, "10.90.22.3")
}

// TestSyncPrunesStaleParentLinks: fabric-marked shims and VLAN parents of
// networks not in the state go, with stale shim routes; the user's links
// and whatever a desired network uses as its parent stay.
func TestSyncPrunesStaleParentLinks(t *testing.T) {
	t.Parallel()
	sw := newSwitch(t)
	h1 := sw.host()
	sw.plug(h1, "eth2")
	// Stands in for an IFACE.VID parent: to fabric an existing parent is
	// just a link (real VLANs are in vlan_test.go, where the kernel can).
	sw.plug(h1, "eth2.40")
	keep := parentNet("mvkeep", datapath.DriverMacvlan, "eth1", "", "10.90.23.0/24")
	keep.HostShim = netip.MustParseAddr("10.90.23.254")
	stale := parentNet("mvstale", datapath.DriverMacvlan, "eth2", "", "10.90.24.0/24")
	stale.HostShim = netip.MustParseAddr("10.90.24.254")
	reused := parentNet("mvreused", datapath.DriverMacvlan, "eth2.40", "", "10.90.25.0/24")
	h1.ensureNetwork(keep)
	h1.ensureNetwork(stale)
	j1 := h1.join(keep, "e1", "", 2)
	s1, p1, e1 := j1.name, j1.path, j1.ep

	mk := func(name, parent, alias string) {
		la := netlink.NewLinkAttrs()
		la.Name = name
		la.ParentIndex = h1.link(parent).Attrs().Index
		if err := h1.hostNL.LinkAdd(&netlink.Macvlan{LinkAttrs: la, Mode: netlink.MACVLAN_MODE_BRIDGE}); err != nil {
			t.Fatalf("add %s: %v", name, err)
		}
		if alias != "" {
			if err := h1.hostNL.LinkSetAlias(h1.link(name), alias); err != nil {
				t.Fatal(err)
			}
		}
	}
	mk("fs-ghost", "eth1", datapath.OwnerPrefix+"shim:ghost")
	mk("eth1.77", "eth1", datapath.OwnerPrefix+"vlan:ghost")
	mk("usermv", "eth1", "")
	mk("userpinned", "eth1", "a note of the user's")
	if err := h1.hostNL.LinkSetAlias(h1.link("eth2.40"), datapath.OwnerPrefix+"vlan:gone-network"); err != nil {
		t.Fatal(err)
	}
	// A route through the kept shim to an endpoint that is not in the state.
	netnstest.Run(t, h1.hostName, "ip", "route", "add", "10.90.23.99/32", "dev", "fs-mvkeep")
	shimIndex := h1.link("fs-mvkeep").Attrs().Index
	childIndex := child(t, p1, "eth0").Attrs().Index

	state := datapath.State{Networks: []datapath.Network{keep, reused}, Endpoints: []datapath.Endpoint{e1}}
	if err := h1.dp.Sync(ctx, state); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	for _, gone := range []string{"fs-mvstale", "fs-ghost", "eth1.77"} {
		if !h1.linkGone(gone) {
			t.Errorf("%s survived Sync", gone)
		}
	}
	for _, kept := range []string{"usermv", "userpinned", "eth1", "eth2", "eth2.40"} {
		h1.link(kept)
	}
	if h1.link("fs-mvkeep").Attrs().Index != shimIndex || child(t, p1, "eth0").Attrs().Index != childIndex {
		t.Error("Sync replaced objects that were fine")
	}
	if got := routes(t, h1.hostName, "dev", "fs-mvkeep"); got != "10.90.23.2 scope link" {
		t.Errorf("routes through the shim after Sync: %q", got)
	}
	mustPing(t, h1.hostName, "10.90.23.2")
	mustPing(t, s1, "10.90.23.254")
}

func TestParentNetworkValidation(t *testing.T) {
	good := parentNet("n", datapath.DriverMacvlan, "eth1.10", "", "10.90.1.0/24")
	good.HostShim = netip.MustParseAddr("10.90.1.254")
	if err := plumb.ValidateNetwork(good); err != nil {
		t.Fatal(err)
	}
	ipv := parentNet("n", datapath.DriverIPvlan, "eth1", "l3s", "10.90.1.0/24")
	ipv.HostShim = good.HostShim
	if err := plumb.ValidateNetwork(ipv); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"eth1", "eth1.1", "eth1.4094", "br.lan", "bond0.v1"} {
		n := good
		n.Parent = p
		if err := plumb.ValidateNetwork(n); err != nil {
			t.Errorf("parent %s: %v", p, err)
		}
	}
	bad := map[string]func(*datapath.Network){
		"VLAN 0":             func(n *datapath.Network) { n.Parent = "eth1.0" },
		"VLAN 4095":          func(n *datapath.Network) { n.Parent = "eth1.4095" },
		"leading zero":       func(n *datapath.Network) { n.Parent = "eth1.010" },
		"no base":            func(n *datapath.Network) { n.Parent = ".10" },
		"no parent":          func(n *datapath.Network) { n.Parent = "" },
		"long parent":        func(n *datapath.Network) { n.Parent = "enp0s31f6abc.100" },
		"internal":           func(n *datapath.Network) { n.Internal = true },
		"bad mode":           func(n *datapath.Network) { n.Mode = "l2" },
		"ipvlan mode":        func(n *datapath.Network) { n.Driver, n.Mode = datapath.DriverIPvlan, "bridge" },
		"gateway outside":    func(n *datapath.Network) { n.Gateway = netip.MustParseAddr("10.90.2.1") },
		"shim outside":       func(n *datapath.Network) { n.HostShim = netip.MustParseAddr("10.90.2.254") },
		"shim is gateway":    func(n *datapath.Network) { n.HostShim = n.Gateway },
		"shim is broadcast":  func(n *datapath.Network) { n.HostShim = netip.MustParseAddr("10.90.1.255") },
		"shim with private":  func(n *datapath.Network) { n.Mode = "private" },
		"shim with passthru": func(n *datapath.Network) { n.Mode = "passthru" },
		"ID with slash":      func(n *datapath.Network) { n.ID = "a/b" },
		"MTU":                func(n *datapath.Network) { n.MTU = 20 },
	}
	for name, mutate := range bad {
		n := good
		mutate(&n)
		if err := plumb.ValidateNetwork(n); !errors.Is(err, datapath.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	ep := endpoint("e", good, "/var/run/netns/x", "eth0", "", 2, true)
	if err := plumb.ValidateEndpoint(good, ep); err != nil {
		t.Fatalf("macvlan endpoint without host interface: %v", err)
	}
	badEPs := map[string]func(*datapath.Endpoint){
		"ports":     func(e *datapath.Endpoint) { e.Ports = []datapath.PortMapping{{Proto: "tcp", HostPort: 80, Port: 80}} },
		"shim":      func(e *datapath.Endpoint) { e.Addr = netip.PrefixFrom(good.HostShim, 24) },
		"gateway":   func(e *datapath.Endpoint) { e.Addr = netip.PrefixFrom(good.Gateway, 24) },
		"mac":       func(e *datapath.Endpoint) { e.MAC = net.HardwareAddr{1, 0, 0, 0, 0, 1} },
		"sandbox":   func(e *datapath.Endpoint) { e.NetNSPath = "" },
		"interface": func(e *datapath.Endpoint) { e.IfName = "" },
	}
	for name, mutate := range badEPs {
		e := ep
		mutate(&e)
		if err := plumb.ValidateEndpoint(good, e); !errors.Is(err, datapath.ErrInvalid) {
			t.Errorf("endpoint %s: %v, want ErrInvalid", name, err)
		}
	}
}

func TestSplitVLAN(t *testing.T) {
	for name, want := range map[string]struct {
		base string
		vid  int
		ok   bool
	}{
		"eth1.10":    {"eth1", 10, true},
		"bond0.4094": {"bond0", 4094, true},
		"a.b.7":      {"a.b", 7, true},
		"eth1":       {},
		"br.lan":     {},
		"eth1.":      {},
		"eth1.1x":    {},
	} {
		base, vid, ok := plumb.SplitVLAN(name)
		if base != want.base || vid != want.vid || ok != want.ok {
			t.Errorf("plumb.SplitVLAN(%q) = %q %d %v", name, base, vid, ok)
		}
	}
}
