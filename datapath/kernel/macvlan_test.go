package kernel

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/datapath"
	fabricns "github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/fabricnet/fabric/datapath/plumb"
)

func TestMacvlanBridgeModeAcrossAndWithinHosts(t *testing.T) {
	t.Parallel()
	n := parentNet("mvb", datapath.DriverMacvlan, "eth1", "", "10.90.1.0/24")
	_, h1, h2 := lanOfTwo(t, n)
	s1, s2 := h1.join(n, "e1", "", 2), h2.join(n, "e2", "", 3)
	_, p3 := h1.sandbox()
	h1.ensureEndpoint(n, endpoint("e3", n, p3, "eth0", "", 4, false))

	mustPing(t, s1.name, "10.90.1.3") // across the switch
	mustPing(t, s2.name, "10.90.1.2")
	mustPing(t, s1.name, "10.90.1.4") // two children of one parent, bridge mode

	c := child(t, s1.path, "eth0")
	mv, ok := c.(*netlink.Macvlan)
	if !ok || mv.Mode != netlink.MACVLAN_MODE_BRIDGE {
		t.Fatalf("sandbox eth0 is %s %+v, want a bridge-mode macvlan", c.Type(), c)
	}
	if c.Attrs().HardwareAddr.String() != "02:42:0a:5a:01:02" || c.Attrs().MTU != 1500 || c.Attrs().ParentIndex != h1.link("eth1").Attrs().Index {
		t.Errorf("child MAC %s MTU %d parent %d", c.Attrs().HardwareAddr, c.Attrs().MTU, c.Attrs().ParentIndex)
	}
	if got := routes(t, s1.name, "default"); got != "default via 10.90.1.1 dev eth0" {
		t.Errorf("default route: %q", got)
	}
	// Nothing else on the host: no bridge, no nftables table, no shim.
	if h1.tableHandle() != "" {
		t.Error("a macvlan network created the nftables table")
	}
	if extra := h1.linksBeyondLAN(); len(extra) != 0 {
		t.Errorf("unexpected host links: %v", extra)
	}
	st := h1.dp.Status(ctx)
	if !strings.Contains(strings.Join(st.Details, ";"), "1 macvlan/ipvlan networks") || len(st.Warnings) != 0 {
		t.Errorf("Status = %+v", st)
	}
}

func TestMacvlanPrivateModeIsolatesSameHost(t *testing.T) {
	t.Parallel()
	n := parentNet("mvp", datapath.DriverMacvlan, "eth1", "private", "10.90.2.0/24")
	_, h1, h2 := lanOfTwo(t, n)
	s1 := h1.join(n, "e1", "", 2)
	h2.join(n, "e2", "", 3)
	h1.join(n, "e3", "", 4)

	mustPing(t, s1.name, "10.90.2.3")    // the LAN is reachable
	mustNotPing(t, s1.name, "10.90.2.4") // a sibling on the same parent is not
	if mv := child(t, s1.path, "eth0").(*netlink.Macvlan); mv.Mode != netlink.MACVLAN_MODE_PRIVATE {
		t.Errorf("mode %v, want private", mv.Mode)
	}
}

// TestMacvlanVEPAModeNeedsReflectiveRelay documents VEPA: every frame goes
// out to the switch, so siblings on one host reach each other only if the
// switch sends frames back out of the port they came in on (hairpin).
func TestMacvlanVEPAModeNeedsReflectiveRelay(t *testing.T) {
	t.Parallel()
	sw := newSwitch(t)
	h1 := newLab(t)
	port := sw.plug(h1, "eth1")
	h2 := sw.host()
	n := parentNet("mvv", datapath.DriverMacvlan, "eth1", "vepa", "10.90.3.0/24")
	n1 := n
	n1.HostShim = netip.MustParseAddr("10.90.3.254") // the shim is a bridge-mode sibling
	h1.ensureNetwork(n1)
	h2.ensureNetwork(n)
	s1 := h1.join(n1, "e1", "", 2)
	h2.join(n, "e2", "", 3)
	h1.join(n1, "e3", "", 4)

	mustPing(t, s1.name, "10.90.3.3")
	mustNotPing(t, s1.name, "10.90.3.4")
	mustNotPing(t, h1.hostName, "10.90.3.2")
	sw.setHairpin(port, true)
	mustPing(t, s1.name, "10.90.3.4")
	mustPing(t, h1.hostName, "10.90.3.2")
}

// TestMacvlanPassthruTakesTheParent: a passthru child is the parent's only
// child and carries the parent's MAC; a second endpoint is refused.
func TestMacvlanPassthruTakesTheParent(t *testing.T) {
	t.Parallel()
	n := parentNet("mvt", datapath.DriverMacvlan, "eth1", "passthru", "10.90.4.0/24")
	_, h1, h2 := lanOfTwo(t, n)
	parentMAC := h1.link("eth1").Attrs().HardwareAddr
	s1 := h1.join(n, "e1", "", 2)
	h2.join(n, "e2", "", 3)
	s3, p3 := h1.sandbox()
	mustPing(t, s1.name, "10.90.4.3")

	c := child(t, s1.path, "eth0")
	if !bytes.Equal(c.Attrs().HardwareAddr, parentMAC) {
		t.Errorf("passthru child MAC %s, want the parent's %s (ep.MAC is ignored)", c.Attrs().HardwareAddr, parentMAC)
	}
	err := h1.dp.EnsureEndpoint(ctx, n, endpoint("e3", n, p3, "eth0", "", 4, true))
	if !errors.Is(err, datapath.ErrInvalid) || !strings.Contains(err.Error(), "passthru") || !strings.Contains(err.Error(), "eth1") {
		t.Errorf("second passthru endpoint: %v, want ErrInvalid explaining passthru", err)
	}
	if !childGone(t, p3, "eth0") {
		t.Error("refused endpoint left a link in its sandbox")
	}
	if out := netnstest.Run(t, s3, "ip", "-o", "link", "show"); strings.Count(out, "\n") != 1 {
		t.Errorf("sandbox of the refused endpoint: %s", out)
	}
	// Re-ensuring the first does not touch the parent's MAC.
	h1.ensureEndpoint(n, s1.ep)
	if got := h1.link("eth1").Attrs().HardwareAddr; !bytes.Equal(got, parentMAC) {
		t.Errorf("parent MAC changed to %s", got)
	}
	mustPing(t, s1.name, "10.90.4.3")
}

// shimLetsHostIn ensures n on h with one endpoint (e1, host byte 2) and
// checks that h cannot reach it; then it gives n a host shim at shim and
// checks that h can. It returns n with its shim, and the endpoint.
func shimLetsHostIn(h *lab, n datapath.Network, shim string) (datapath.Network, joined) {
	h.t.Helper()
	h.ensureNetwork(n)
	j := h.join(n, "e1", "", 2)
	ip := j.ep.Addr.Addr().String()
	mustNotPing(h.t, h.hostName, ip)

	n.HostShim = netip.MustParseAddr(shim)
	h.ensureNetwork(n)
	h.ensureEndpoint(n, j.ep)
	mustPing(h.t, h.hostName, ip)
	return n, j
}

// TestHostShim: the kernel keeps a host out of its own macvlan sandboxes
// (even with an address on the parent's LAN); the shim lets it in.
func TestHostShim(t *testing.T) {
	t.Parallel()
	sw := newSwitch(t)
	h1 := sw.host()
	h1.addAddr("eth1", "10.90.6.250/24") // the host's own LAN address
	n, s1 := shimLetsHostIn(h1, parentNet("mvshim0123456789", datapath.DriverMacvlan, "eth1", "", "10.90.6.0/24"), "10.90.6.254")
	e1 := s1.ep
	mustPing(t, s1.name, "10.90.6.254")

	shim := h1.link("fs-mvshim012345")
	mv, ok := shim.(*netlink.Macvlan)
	if !ok || mv.Mode != netlink.MACVLAN_MODE_BRIDGE || shim.Attrs().Alias != datapath.OwnerPrefix+"shim:"+n.ID || !plumb.IsUp(shim) {
		t.Fatalf("shim %s %+v", shim.Type(), shim.Attrs())
	}
	addrs, err := h1.hostNL.AddrList(shim, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "10.90.6.254/32" {
		t.Errorf("shim addresses %v (%v)", addrs, err)
	}
	if got := routes(t, h1.hostName, "10.90.6.2/32"); got != "10.90.6.2 dev fs-mvshim012345 scope link" {
		t.Errorf("route to the endpoint: %q", got)
	}
	h1.ensureAgainKeeps(n, e1, "fs-mvshim012345")

	if err := h1.dp.DeleteEndpoint(ctx, n, e1); err != nil {
		t.Fatal(err)
	}
	if got := routes(t, h1.hostName, "10.90.6.2/32"); got != "" {
		t.Errorf("route left after DeleteEndpoint: %q", got)
	}
	h1.ensureEndpoint(n, e1)
	mustPing(t, h1.hostName, "10.90.6.2")

	// Turning the shim off removes it, and the host is out again.
	n.HostShim = netip.Addr{}
	h1.ensureNetwork(n)
	if !h1.linkGone("fs-mvshim012345") {
		t.Fatal("shim survived being turned off")
	}
	mustNotPing(t, h1.hostName, "10.90.6.2")

	n.HostShim = netip.MustParseAddr("10.90.6.254")
	h1.ensureNetwork(n)
	if err := h1.dp.DeleteNetwork(ctx, n); err != nil {
		t.Fatal(err)
	}
	if !h1.linkGone("fs-mvshim012345") {
		t.Error("DeleteNetwork left the shim")
	}
	h1.link("eth1") // the parent stays, of course
}

func TestMacvlanEnsureIsIdempotentAndRepairs(t *testing.T) {
	t.Parallel()
	sw := newSwitch(t)
	h1, h2 := sw.host(), sw.host()
	n := parentNet("mvi", datapath.DriverMacvlan, "eth1", "bridge", "10.90.7.0/24")
	n.HostShim = netip.MustParseAddr("10.90.7.254")
	h1.ensureNetwork(n)
	n2 := parentNet("mvi", datapath.DriverMacvlan, "eth1", "", "10.90.7.0/24") // h2 has no shim
	h2.ensureNetwork(n2)
	j1 := h1.join(n, "e1", "", 2)
	s1, p1, e1 := j1.name, j1.path, j1.ep
	s2 := h2.join(n2, "e2", "", 3).name

	indexes := func() [2]int {
		return [2]int{h1.link("fs-mvi").Attrs().Index, child(t, p1, "eth0").Attrs().Index}
	}
	before := indexes()
	for range 2 {
		h1.ensureNetwork(n)
		h1.ensureEndpoint(n, e1)
	}
	if after := indexes(); after != before {
		t.Fatalf("indexes changed: %v -> %v", before, after)
	}

	// Drift inside the sandbox and on the host is repaired in place.
	netnstest.Run(t, s1, "ip", "addr", "flush", "dev", "eth0")
	netnstest.Run(t, s1, "ip", "link", "set", "eth0", "mtu", "1280")
	netnstest.Run(t, s1, "ip", "link", "set", "eth0", "address", "02:00:00:00:00:99")
	netnstest.Run(t, s1, "ip", "link", "set", "eth0", "down")
	netnstest.Run(t, h1.hostName, "ip", "route", "del", "10.90.7.2/32")
	netnstest.Run(t, h1.hostName, "ip", "addr", "flush", "dev", "fs-mvi")
	h1.ensureNetwork(n)
	h1.ensureEndpoint(n, e1)
	if after := indexes(); after != before {
		t.Errorf("repair replaced links: %v -> %v", before, after)
	}
	c := child(t, p1, "eth0")
	if c.Attrs().MTU != 1500 || c.Attrs().HardwareAddr.String() != "02:42:0a:5a:07:02" || !plumb.IsUp(c) {
		t.Errorf("child after repair: MTU %d MAC %s up %v", c.Attrs().MTU, c.Attrs().HardwareAddr, plumb.IsUp(c))
	}
	if got := routes(t, s1, "default"); got != "default via 10.90.7.1 dev eth0" {
		t.Errorf("default route after repair: %q", got)
	}
	mustPing(t, s2, "10.90.7.2")
	mustPing(t, h1.hostName, "10.90.7.2")

	// MTU: the network's when smaller than the parent's, else the parent's.
	n.MTU = 1400
	h1.ensureNetwork(n)
	h1.ensureEndpoint(n, e1)
	if m1, m2 := child(t, p1, "eth0").Attrs().MTU, h1.link("fs-mvi").Attrs().MTU; m1 != 1400 || m2 != 1400 {
		t.Errorf("MTU 1400 network: child %d shim %d", m1, m2)
	}
	n.MTU = 9000
	h1.ensureNetwork(n)
	h1.ensureEndpoint(n, e1)
	if m := child(t, p1, "eth0").Attrs().MTU; m != 1500 {
		t.Errorf("MTU 9000 network on a 1500 parent: child MTU %d, want it clamped to 1500", m)
	}

	// Another mode means another child.
	n.Mode = "private"
	n.HostShim = netip.Addr{}
	h1.ensureNetwork(n)
	h1.ensureEndpoint(n, e1)
	if mv := child(t, p1, "eth0").(*netlink.Macvlan); mv.Mode != netlink.MACVLAN_MODE_PRIVATE {
		t.Errorf("mode after switching to private: %v", mv.Mode)
	}
	mustPing(t, s1, "10.90.7.3")
}

// TestMacvlanReplacesWrongKindInSandbox: a leftover veth under the
// endpoint's name is replaced by the child.
func TestMacvlanReplacesWrongKindInSandbox(t *testing.T) {
	t.Parallel()
	n := parentNet("mvk", datapath.DriverMacvlan, "eth1", "", "10.90.8.0/24")
	_, h1, h2 := lanOfTwo(t, n)
	s1, p1 := h1.sandbox()
	netnstest.Run(t, s1, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "old0")
	h1.ensureEndpoint(n, endpoint("e1", n, p1, "eth0", "", 2, true))
	h2.join(n, "e2", "", 3)
	if c := child(t, p1, "eth0"); c.Type() != "macvlan" {
		t.Fatalf("eth0 is a %s", c.Type())
	}
	mustPing(t, s1, "10.90.8.3")
}

// TestMacvlanFailedSetupLeavesNothing also guards against the netlink
// library's habit of resolving a new link's index by name in the handle's
// namespace: the rollback must delete the sandbox's eth0, not the host's.
func TestMacvlanFailedSetupLeavesNothing(t *testing.T) {
	t.Parallel()
	sw := newSwitch(t)
	h1 := sw.host()
	netnstest.Run(t, h1.hostName, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
	n := parentNet("mvf", datapath.DriverMacvlan, "eth1", "", "10.90.9.0/24")
	h1.ensureNetwork(n)
	_, p1 := h1.sandbox()
	e1 := endpoint("e1", n, p1, "eth0", "", 2, true)
	boom := errors.New("injected failure")
	faulty := h1.faulty(plumb.Faults{ChildCreated: func() error { return boom }})
	if err := faulty.EnsureEndpoint(ctx, n, e1); !errors.Is(err, boom) {
		t.Fatalf("EnsureEndpoint: %v, want the injected failure", err)
	}
	if !childGone(t, p1, "eth0") {
		t.Error("child left in the sandbox after a failed set-up")
	}
	h1.link("eth0") // the host's own eth0 is untouched
	h1.ensureEndpoint(n, e1)
	child(t, p1, "eth0")
	h1.link("eth0")
}

func TestMacvlanDeleteEndpointToleratesMissing(t *testing.T) {
	t.Parallel()
	sw := newSwitch(t)
	h1 := sw.host()
	n := parentNet("mvd", datapath.DriverMacvlan, "eth1", "", "10.90.10.0/24")
	n.HostShim = netip.MustParseAddr("10.90.10.254")
	h1.ensureNetwork(n)
	j1 := h1.join(n, "e1", "", 2)
	p1, e1 := j1.path, j1.ep
	for range 2 {
		if err := h1.dp.DeleteEndpoint(ctx, n, e1); err != nil {
			t.Fatalf("DeleteEndpoint: %v", err)
		}
	}
	if !childGone(t, p1, "eth0") {
		t.Error("child survived DeleteEndpoint")
	}
	gone := e1
	gone.NetNSPath = fabricns.Path("fk-no-such-sandbox")
	if err := h1.dp.DeleteEndpoint(ctx, n, gone); err != nil {
		t.Errorf("DeleteEndpoint with its sandbox gone: %v", err)
	}
	for range 2 {
		if err := h1.dp.DeleteNetwork(ctx, n); err != nil {
			t.Fatalf("DeleteNetwork: %v", err)
		}
	}
	if st := h1.dp.Status(ctx); len(st.Details) != 2 {
		t.Errorf("deleted network still in Status: %+v", st)
	}
}

// on older ones), without touching the host's.
func TestChildNameTakenOnHost(t *testing.T) {
	t.Parallel()
	sw := newSwitch(t)
	h1, h2 := sw.host(), sw.host()
	netnstest.Run(t, h1.hostName, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
	hostEth0 := h1.link("eth0").Attrs().Index
	n := parentNet("mvn", datapath.DriverMacvlan, "eth1", "", "10.90.12.0/24")
	ensureOn(n, h1, h2)
	s1 := h1.join(n, "e1", "", 2)
	h2.join(n, "e2", "", 3)
	mustPing(t, s1.name, "10.90.12.3")
	if err := h1.dp.DeleteEndpoint(ctx, n, s1.ep); err != nil {
		t.Fatal(err)
	}
	if !childGone(t, s1.path, "eth0") || h1.link("eth0").Attrs().Index != hostEth0 {
		t.Error("DeleteEndpoint got the wrong eth0")
	}
}

// TestChildRenamedFallback drives the older kernels' path directly, with a
// half-made child of an earlier attempt left under the temporary name.
func TestChildRenamedFallback(t *testing.T) {
	t.Parallel()
	n := parentNet("mvrn", datapath.DriverMacvlan, "eth1", "", "10.90.13.0/24")
	_, h1, h2 := lanOfTwo(t, n)
	s1, p1 := h1.sandbox()
	e1 := endpoint("e1", n, p1, "eth0", "", 2, true)
	h2.join(n, "e2", "", 3)
	tmp := plumb.ChildTempName(e1.ID)
	netnstest.Run(t, h1.hostName, "ip", "link", "add", "link", "eth1", "name", tmp, "netns", s1, "type", "macvlan", "mode", "bridge")

	faulty := h1.faulty(plumb.Faults{RenamedChild: true})
	if err := faulty.EnsureEndpoint(ctx, n, e1); err != nil {
		t.Fatal(err)
	}
	link := child(t, p1, "eth0")
	if link.Attrs().Name != "eth0" || link.Attrs().HardwareAddr.String() != "02:42:0a:5a:0d:02" || !childGone(t, p1, tmp) {
		t.Errorf("child %+v; temporary name still there: %v", link.Attrs(), !childGone(t, p1, tmp))
	}
	h1.ensureEndpoint(n, e1) // configures the child made above in place
	if child(t, p1, "eth0").Attrs().Index != link.Attrs().Index {
		t.Error("ensure replaced the child")
	}
	mustPing(t, s1, "10.90.13.3")
}

// The shared resolver (Options.ShimRoutes, here on the host's lo) is off
// the LAN: a macvlan or ipvlan L2 sandbox would send its queries to the
// LAN's gateway. With a host shim it gets a route there via the shim's
// address, and the host answers; the route comes back when deleted, and
// goes with the shim. An ipvlan L3 sandbox gets none: the host routes.
func TestShimRoutesTakeSandboxesToTheHost(t *testing.T) {
	for _, tc := range []struct {
		driver, mode, subnet string
		routed               bool
	}{
		{datapath.DriverMacvlan, "", "10.90.31.0/24", false},
		{datapath.DriverIPvlan, "l2", "10.90.32.0/24", false},
		{datapath.DriverIPvlan, "l3", "10.90.33.0/24", true},
	} {
		t.Run(tc.driver+tc.mode, func(t *testing.T) {
			t.Parallel()
			if tc.driver == datapath.DriverIPvlan {
				requireLinkKind(t, "ipvlan")
			}
			testShimRoutes(t, parentNet("res"+tc.driver+tc.mode, tc.driver, "eth1", tc.mode, tc.subnet), tc.routed)
		})
	}
}

func testShimRoutes(t *testing.T, n datapath.Network, routed bool) {
	const resolver = "169.254.53.53"
	h1 := newSwitch(t).hostWith(Options{ShimRoutes: []netip.Addr{netip.MustParseAddr(resolver)}})
	netnstest.Run(t, h1.hostName, "ip", "addr", "add", resolver+"/32", "dev", "lo")

	h1.ensureNetwork(n)
	s1 := h1.join(n, "e1", "", 2)
	if got := routes(t, s1.name, resolver); got != "" {
		t.Errorf("route to %s without a shim: %q, want none", resolver, got)
	}
	shim := n.Subnet.Addr().As4()
	shim[3] = 254
	n.HostShim = netip.AddrFrom4(shim)
	h1.ensureNetwork(n)
	h1.ensureEndpoint(n, s1.ep)
	want := resolver + " via " + n.HostShim.String() + " dev eth0 proto 251"
	if routed {
		want = ""
	}
	if got := routes(t, s1.name, resolver); got != want {
		t.Fatalf("route to %s: %q, want %q", resolver, got, want)
	}
	if routed {
		return
	}
	mustPing(t, s1.name, resolver)

	netnstest.Run(t, s1.name, "ip", "route", "del", resolver)
	h1.ensureEndpoint(n, s1.ep)
	if got := routes(t, s1.name, resolver); got != want {
		t.Errorf("route to %s after it was deleted and the endpoint ensured: %q, want %q", resolver, got, want)
	}

	n.HostShim = netip.Addr{}
	h1.ensureNetwork(n)
	h1.ensureEndpoint(n, s1.ep)
	if got := routes(t, s1.name, resolver); got != "" {
		t.Errorf("route to %s after the shim was turned off: %q, want none", resolver, got)
	}
}
