package kernel

import (
	"errors"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// These tests need a kernel with 802.1q (CONFIG_VLAN_8021Q) and skip
// without it; the VLAN logic itself is also covered against a fake in
// vlanfake_test.go.

// TestVLANNetworksAreSeparated: eth1.10 and eth1.20 made by fabric on two
// hosts. Both VLANs use the same IP subnet on purpose, so nothing but the
// 802.1q tag keeps VLAN 10 from reaching VLAN 20.
func TestVLANNetworksAreSeparated(t *testing.T) {
	t.Parallel()
	requireLinkKind(t, "vlan")
	sw := newSwitch(t)
	h1, h2 := sw.host(), sw.host()
	v10 := parentNet("v10", datapath.DriverMacvlan, "eth1.10", "", "10.90.30.0/24")
	v20 := parentNet("v20", datapath.DriverMacvlan, "eth1.20", "", "10.90.30.0/24")
	ensureOn(v10, h1, h2)
	ensureOn(v20, h1, h2)
	ja := h1.join(v10, "a", "", 2)
	a, ea := ja.name, ja.ep
	h2.join(v10, "b", "", 3)
	c := h1.join(v20, "c", "", 4).name
	h2.join(v20, "d", "", 5)

	mustPing(t, a, "10.90.30.3")    // VLAN 10 across hosts
	mustPing(t, c, "10.90.30.5")    // VLAN 20 across hosts
	mustNotPing(t, a, "10.90.30.5") // VLAN 10 to VLAN 20, other host
	mustNotPing(t, a, "10.90.30.4") // and on the same host

	for _, vid := range []int{10, 20} {
		name := "eth1." + map[int]string{10: "10", 20: "20"}[vid]
		v, ok := h1.link(name).(*netlink.Vlan)
		if !ok || v.VlanId != vid || v.ParentIndex != h1.link("eth1").Attrs().Index || !plumb.IsUp(v) ||
			v.Alias != datapath.OwnerPrefix+"vlan:v"+name[5:] {
			t.Errorf("%s: %+v", name, h1.link(name))
		}
	}
	h1.ensureAgainKeeps(v10, ea, "eth1.10")

	if err := h1.dp.DeleteEndpoint(ctx, v10, ea); err != nil {
		t.Fatal(err)
	}
	if err := h1.dp.DeleteNetwork(ctx, v10); err != nil {
		t.Fatal(err)
	}
	if !h1.linkGone("eth1.10") {
		t.Error("DeleteNetwork left the VLAN fabric made")
	}
	h1.link("eth1.20")
	mustPing(t, c, "10.90.30.5")
}

// TestVLANOfTheUserIsLeftAlone: an eth1.30 the user made is used as it is,
// never set up, and survives DeleteNetwork and Sync.
func TestVLANOfTheUserIsLeftAlone(t *testing.T) {
	t.Parallel()
	requireLinkKind(t, "vlan")
	sw := newSwitch(t)
	h1, h2 := sw.host(), sw.host()
	netnstest.Run(t, h1.hostName, "ip", "link", "add", "link", "eth1", "name", "eth1.30", "type", "vlan", "id", "30")
	n := parentNet("v30", datapath.DriverMacvlan, "eth1.30", "", "10.90.31.0/24")
	if err := h1.ensureNetworkErr(n); !errors.Is(err, datapath.ErrParentMissing) || !strings.Contains(err.Error(), "eth1.30 is down") {
		t.Fatalf("the user's VLAN down: %v", err)
	}
	if plumb.IsUp(h1.link("eth1.30")) {
		t.Fatal("fabric set the user's VLAN up")
	}
	netnstest.Run(t, h1.hostName, "ip", "link", "set", "eth1.30", "up")
	ensureOn(n, h1, h2) // made by fabric on h2
	s1 := h1.join(n, "e1", "", 2).name
	h2.join(n, "e2", "", 3)
	mustPing(t, s1, "10.90.31.3")

	if err := h1.dp.Sync(ctx, datapath.State{}); err != nil {
		t.Fatal(err)
	}
	if err := h1.dp.DeleteNetwork(ctx, n); err != nil {
		t.Fatal(err)
	}
	if v := h1.link("eth1.30"); v.Attrs().Alias != "" || !plumb.IsUp(v) {
		t.Errorf("the user's VLAN was changed: %+v", v.Attrs())
	}
	if err := h2.dp.Sync(ctx, datapath.State{}); err != nil {
		t.Fatal(err)
	}
	if !h2.linkGone("eth1.30") {
		t.Error("Sync kept a VLAN fabric made for a network that is gone")
	}
}

// TestVLANBaseRemovedAndRestored: the VLAN's base goes (and the kernel
// takes the VLAN and the children with it); when it is back, EnsureNetwork
// makes the VLAN again and EnsureEndpoint the children.
func TestVLANBaseRemovedAndRestored(t *testing.T) {
	t.Parallel()
	requireLinkKind(t, "vlan")
	n := parentNet("v40", datapath.DriverMacvlan, "eth1.40", "", "10.90.32.0/24")
	sw, h1, h2 := lanOfTwo(t, n)
	j1 := h1.join(n, "e1", "", 2)
	s1, p1, e1 := j1.name, j1.path, j1.ep
	h2.join(n, "e2", "", 3)
	mustPing(t, s1, "10.90.32.3")

	if err := h1.hostNL.LinkDel(h1.link("eth1")); err != nil {
		t.Fatal(err)
	}
	if !h1.linkGone("eth1.40") || !childGone(t, p1, "eth0") {
		t.Fatal("VLAN or child survived the base")
	}
	if w := strings.Join(h1.dp.Status(ctx).Warnings, ";"); !strings.Contains(w, "eth1.40 and its base eth1 do not exist") {
		t.Errorf("Status warnings: %q", w)
	}
	if err := h1.ensureNetworkErr(n); !errors.Is(err, datapath.ErrParentMissing) {
		t.Errorf("EnsureNetwork without base: %v", err)
	}
	sw.plug(h1, "eth1")
	h1.ensureNetwork(n)
	h1.ensureEndpoint(n, e1)
	mustPing(t, s1, "10.90.32.3")
	if len(h1.dp.Status(ctx).Warnings) != 0 {
		t.Errorf("warnings after restore: %q", h1.dp.Status(ctx).Warnings)
	}
}

// TestVLANHalfMadeIsAdoptedByTheKernel is the fake's adoption test on a
// real kernel: fv-<id> without alias becomes eth1.50.
func TestVLANHalfMadeIsAdoptedByTheKernel(t *testing.T) {
	t.Parallel()
	requireLinkKind(t, "vlan")
	sw := newSwitch(t)
	h1 := sw.host()
	n := parentNet("v50", datapath.DriverMacvlan, "eth1.50", "", "10.90.33.0/24")
	netnstest.Run(t, h1.hostName, "ip", "link", "add", "link", "eth1", "name", plumb.VLANTempName(n.ID), "type", "vlan", "id", "50")
	index := h1.link(plumb.VLANTempName(n.ID)).Attrs().Index
	h1.ensureNetwork(n)
	if v := h1.link("eth1.50"); v.Attrs().Index != index || v.Attrs().Alias != plumb.VLANAlias(n.ID) || !plumb.IsUp(v) {
		t.Errorf("eth1.50 after adoption: %+v", v.Attrs())
	}
}
