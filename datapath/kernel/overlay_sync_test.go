package kernel

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// TestOverlaySyncRepairsAndPrunes: Sync and EnsureNetwork put an overlay's
// VXLAN device back as it should be (MTU, port, learning, VNI), with the
// remotes last set, remove the eBPF datapath's leftovers but not another
// program's device, and take everything away with the network.
func TestOverlaySyncRepairsAndPrunes(t *testing.T) {
	t.Parallel()
	const port = 48790
	a, b, aIP, bIP := overlayHosts(t, "10.201.2", port)
	n := overlayNetwork("ovs", "br-s", "10.90.2.0/24", 77)
	sa, pa := a.sandbox()
	_, pb := b.sandbox()
	epa := endpoint("epa", n, pa, "eth0", "vha", 2, true)
	epb := endpoint("epb", n, pb, "eth0", "vhb", 3, true)
	toB, toA := remoteOf(epb, bIP), remoteOf(epa, aIP)
	b.ensureNetwork(n)
	b.ensureEndpoint(n, epb)
	b.setRemotes(n, toA)

	// A leftover of the eBPF datapath holds the tunnel port's kind of
	// socket; the bridge model removes it.
	a.addFlowVXLAN(port, datapath.OwnerPrefix+"tunnel")
	if err := a.hostNL.LinkSetUp(a.link(flowVXLANName)); err != nil {
		t.Fatal(err)
	}

	c := &overlaySync{a: a, aIP: aIP, port: port, n: n, toB: toB, sandbox: sa, state: datapath.State{
		Networks:  []datapath.Network{n},
		Endpoints: []datapath.Endpoint{epa},
		Remotes:   map[string][]datapath.Remote{n.ID: {toB}},
	}}
	c.sync("Sync")
	if !a.linkGone(flowVXLANName) {
		t.Error("Sync left the flow-based VXLAN device")
	}
	if v := a.vxlan("fvx77"); v.Port != port || v.VxlanId != 77 {
		t.Errorf("vxlan port %d VNI %d", v.Port, v.VxlanId)
	}
	a.checkTunnelEntries("fvx77", toB)
	mustPing(t, sa, "10.90.2.3")
	index := a.link("fvx77").Attrs().Index
	c.sync("second Sync")
	if got := a.link("fvx77").Attrs().Index; got != index {
		t.Errorf("second Sync recreated the VXLAN device (index %d -> %d)", index, got)
	}

	c.checkDeviceRepaired(index)
	c.checkVNIChange()
	c.checkFlowLeftovers()

	// A network missing from Remotes has none.
	c.state.Remotes = nil
	c.sync("Sync without remotes")
	a.checkTunnelEntries("fvx77")
	mustNotPing(t, sa, "10.90.2.3")

	// Without the network the device goes with the bridge.
	if err := a.dp.Sync(ctx, datapath.State{}); err != nil {
		t.Fatalf("empty Sync: %v", err)
	}
	if !a.linkGone("fvx77") || !a.linkGone("br-s") {
		t.Error("empty Sync left the VXLAN device or the bridge")
	}
	if st := a.dp.Status(ctx); slices.ContainsFunc(st.Details, func(s string) bool { return strings.HasPrefix(s, "overlay ") }) {
		t.Errorf("status still lists an overlay: %q", st.Details)
	}
}

// overlaySync is TestOverlaySyncRepairsAndPrunes' host a: overlay network
// n (VNI 77 on tunnel port port) with one endpoint, in sandbox, and the
// remote toB, as state has them.
type overlaySync struct {
	a       *lab
	aIP     netip.Addr
	port    int
	n       datapath.Network
	toB     datapath.Remote
	sandbox string
	state   datapath.State
}

func (c *overlaySync) sync(what string) {
	c.a.t.Helper()
	if err := c.a.dp.Sync(ctx, c.state); err != nil {
		c.a.t.Fatalf("%s: %v", what, err)
	}
}

// checkDeviceRepaired: a wrong MTU on the VXLAN device (index) is fixed in
// place; a device with the wrong port and learning on is replaced, and the
// remotes last set come back with it, by EnsureNetwork as by Sync.
func (c *overlaySync) checkDeviceRepaired(index int) {
	a, t := c.a, c.a.t
	t.Helper()
	if err := a.hostNL.LinkSetMTU(a.link("fvx77"), 1400); err != nil {
		t.Fatal(err)
	}
	a.ensureNetwork(c.n)
	if l := a.link("fvx77"); l.Attrs().Index != index || l.Attrs().MTU != 1450 {
		t.Errorf("after MTU repair: index %d (was %d) MTU %d", l.Attrs().Index, index, l.Attrs().MTU)
	}

	c.tamper()
	a.ensureNetwork(c.n)
	if v := a.vxlan("fvx77"); v.Port != c.port || v.Learning || !v.Proxy || v.MasterIndex != a.link("br-s").Attrs().Index || !plumb.IsUp(v) {
		t.Errorf("after EnsureNetwork repair: port %d learning %v proxy %v master %d up %v", v.Port, v.Learning, v.Proxy, v.MasterIndex, plumb.IsUp(v))
	}
	a.checkTunnelEntries("fvx77", c.toB)
	mustPing(t, c.sandbox, "10.90.2.3")
	c.tamper()
	c.sync("Sync after tampering")
	if v := a.vxlan("fvx77"); v.Port != c.port || v.Learning {
		t.Errorf("after Sync repair: port %d learning %v", v.Port, v.Learning)
	}
	a.checkTunnelEntries("fvx77", c.toB)
	mustPing(t, c.sandbox, "10.90.2.3")
}

// tamper replaces fvx77 by one of the wrong port, learning on.
func (c *overlaySync) tamper() {
	a, t := c.a, c.a.t
	t.Helper()
	if err := a.hostNL.LinkDel(a.link("fvx77")); err != nil {
		t.Fatal(err)
	}
	la := netlink.NewLinkAttrs()
	la.Name = "fvx77"
	if err := a.hostNL.LinkAdd(&netlink.Vxlan{LinkAttrs: la, VxlanId: 77, Port: c.port + 1, Learning: true, SrcAddr: c.aIP.AsSlice()}); err != nil {
		t.Fatal(err)
	}
	if err := a.hostNL.LinkSetAlias(a.link("fvx77"), vxlanAlias(c.n.ID)); err != nil {
		t.Fatal(err)
	}
}

// checkVNIChange: a new VNI is a new device and the old one goes; Sync
// goes back to the state's.
func (c *overlaySync) checkVNIChange() {
	a, t := c.a, c.a.t
	t.Helper()
	n2 := c.n
	n2.VNI = 78
	a.ensureNetwork(n2)
	if !a.linkGone("fvx77") {
		t.Error("the device of the old VNI is still there")
	}
	if v := a.vxlan("fvx78"); v.VxlanId != 78 {
		t.Errorf("new device VNI %d", v.VxlanId)
	}
	c.sync("Sync back to VNI 77")
	if !a.linkGone("fvx78") {
		t.Error("Sync kept the device of a VNI not in the state")
	}
	a.checkTunnelEntries("fvx77", c.toB)
}

// checkFlowLeftovers: a leftover of the eBPF datapath without a fabric:
// alias goes too, another program's link of that name stays.
func (c *overlaySync) checkFlowLeftovers() {
	a, t := c.a, c.a.t
	t.Helper()
	a.addFlowVXLAN(c.port, "fabric-ebpf tunnel")
	c.sync("Sync with the leftover")
	if !a.linkGone(flowVXLANName) {
		t.Error("Sync left the flow-based VXLAN device marked fabric-ebpf")
	}
	a.addFlowVXLAN(c.port, "someone else's")
	c.sync("Sync with a foreign flow-based device")
	if a.linkGone(flowVXLANName) {
		t.Error("Sync removed a flow-based VXLAN device fabric did not make")
	}
	if err := a.hostNL.LinkDel(a.link(flowVXLANName)); err != nil {
		t.Fatal(err)
	}
}

// addFlowVXLAN makes a flow-based VXLAN device of the eBPF datapath's
// name on port, with alias, as a leftover of that datapath would be.
func (l *lab) addFlowVXLAN(port int, alias string) {
	l.t.Helper()
	la := netlink.NewLinkAttrs()
	la.Name = flowVXLANName
	if err := l.hostNL.LinkAdd(&netlink.Vxlan{LinkAttrs: la, FlowBased: true, Port: port}); err != nil {
		l.t.Fatalf("create flow-based leftover: %v", err)
	}
	if err := l.hostNL.LinkSetAlias(l.link(flowVXLANName), alias); err != nil {
		l.t.Fatal(err)
	}
}
