package kernel

import (
	"bytes"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// These tests need a kernel with ipvlan (CONFIG_IPVLAN, and
// CONFIG_IPVLAN_L3S for l3s) and skip without it.

func TestIPvlanL2(t *testing.T) {
	t.Parallel()
	requireLinkKind(t, "ipvlan")
	n := parentNet("ipl2", datapath.DriverIPvlan, "eth1", "", "10.90.40.0/24")
	_, h1, h2 := lanOfTwo(t, n)
	j1 := h1.join(n, "e1", "", 2)
	s1, p1, e1 := j1.name, j1.path, j1.ep
	h2.join(n, "e2", "", 3)
	h1.join(n, "e3", "", 4)

	mustPing(t, s1, "10.90.40.3") // across hosts
	mustPing(t, s1, "10.90.40.4") // same parent

	c := child(t, p1, "eth0")
	iv, ok := c.(*netlink.IPVlan)
	if !ok || iv.Mode != netlink.IPVLAN_MODE_L2 {
		t.Fatalf("sandbox eth0: %s %+v", c.Type(), c)
	}
	if !bytes.Equal(c.Attrs().HardwareAddr, h1.link("eth1").Attrs().HardwareAddr) {
		t.Errorf("ipvlan child MAC %s, want the parent's", c.Attrs().HardwareAddr)
	}
	if got := routes(t, s1, "default"); got != "default via 10.90.40.1 dev eth0" {
		t.Errorf("default route: %q", got)
	}
	index := c.Attrs().Index
	h1.ensureEndpoint(n, e1) // ep.MAC differs from the child's: not a reason to touch it
	if child(t, p1, "eth0").Attrs().Index != index {
		t.Error("ensuring again replaced the child")
	}
}

// TestIPvlanL3 also routes across hosts: in l3 mode children do no ARP,
// the host's routing table sends their packets, so each host needs a
// route to the other host's endpoints through the underlay (which the
// operator or the agent provides; here the test does).
func TestIPvlanL3(t *testing.T) {
	t.Parallel()
	requireLinkKind(t, "ipvlan")
	sw := newSwitch(t)
	h1, h2 := sw.host(), sw.host()
	h1.addAddr("eth1", "10.91.0.1/24")
	h2.addAddr("eth1", "10.91.0.2/24")
	n := parentNet("ipl3", datapath.DriverIPvlan, "eth1", "l3", "10.90.41.0/24")
	ensureOn(n, h1, h2)
	s1 := h1.join(n, "e1", "", 2).name
	h2.join(n, "e2", "", 4)
	h1.join(n, "e3", "", 3)

	if got := routes(t, s1, "default"); got != "default dev eth0 scope link" {
		t.Errorf("l3 default route: %q, want one through the device", got)
	}
	mustPing(t, s1, "10.90.41.3") // same host

	netnstest.Run(t, h1.hostName, "ip", "route", "add", "10.90.41.4/32", "via", "10.91.0.2")
	netnstest.Run(t, h2.hostName, "ip", "route", "add", "10.90.41.2/32", "via", "10.91.0.1")
	mustPing(t, s1, "10.90.41.4")
}

func TestIPvlanL3S(t *testing.T) {
	t.Parallel()
	requireLinkKind(t, "ipvlan")
	requireLinkKind(t, "ipvlan-l3s")
	sw := newSwitch(t)
	h1 := sw.host()
	n := parentNet("ipl3s", datapath.DriverIPvlan, "eth1", "l3s", "10.90.42.0/24")
	h1.ensureNetwork(n)
	s1 := h1.join(n, "e1", "", 2)
	h1.join(n, "e2", "", 3)
	mustPing(t, s1.name, "10.90.42.3")
	if iv := child(t, s1.path, "eth0").(*netlink.IPVlan); iv.Mode != netlink.IPVLAN_MODE_L3S {
		t.Errorf("mode %v", iv.Mode)
	}
}

// TestIPvlanHostShim: the shim of an ipvlan network is an ipvlan child in
// the network's mode (the mode is the parent's, shared by all children).
func TestIPvlanHostShim(t *testing.T) {
	for _, mode := range []string{"l2", "l3"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			requireLinkKind(t, "ipvlan")
			sw := newSwitch(t)
			h1 := sw.host()
			h1.addAddr("eth1", "10.90.43.250/24")
			n, _ := shimLetsHostIn(h1, parentNet("ipshim"+mode, datapath.DriverIPvlan, "eth1", mode, "10.90.43.0/24"), "10.90.43.254")
			shim, ok := h1.link(plumb.ShimName(n.ID)).(*netlink.IPVlan)
			if !ok || shim.Mode != map[string]netlink.IPVlanMode{"l2": netlink.IPVLAN_MODE_L2, "l3": netlink.IPVLAN_MODE_L3, "l3s": netlink.IPVLAN_MODE_L3S}[mode] || shim.Alias != plumb.ShimAlias(n.ID) {
				t.Errorf("shim: %+v", h1.link(plumb.ShimName(n.ID)))
			}
			if err := h1.dp.DeleteNetwork(ctx, n); err != nil {
				t.Fatal(err)
			}
			if !h1.linkGone(plumb.ShimName(n.ID)) {
				t.Error("shim left")
			}
		})
	}
}
