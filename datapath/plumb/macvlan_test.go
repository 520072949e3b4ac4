package plumb

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// TestChildMACAndLinkKind checks how children are described, without a
// kernel: ipvlan and passthru children never get ep.MAC.
func TestChildMACAndLinkKind(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0x42, 1, 2, 3, 4}
	ep := datapath.Endpoint{IfName: "eth0", MAC: mac}
	parent := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 7, MTU: 1500}}
	for _, tc := range []struct {
		driver, mode string
		want         string
		mac          net.HardwareAddr
	}{
		{datapath.DriverMacvlan, "", "macvlan/bridge", mac},
		{datapath.DriverMacvlan, "private", "macvlan/private", mac},
		{datapath.DriverMacvlan, "vepa", "macvlan/vepa", mac},
		{datapath.DriverMacvlan, "passthru", "macvlan/passthru", nil},
		{datapath.DriverIPvlan, "", "ipvlan/l2", nil},
		{datapath.DriverIPvlan, "l3", "ipvlan/l3", nil},
		{datapath.DriverIPvlan, "l3s", "ipvlan/l3s", nil},
	} {
		n := datapath.Network{Driver: tc.driver, Mode: tc.mode}
		l := newChild(n, ep, "eth0", parent, 1400, 3)
		got := l.Type() + "/"
		switch c := l.(type) {
		case *netlink.Macvlan:
			got += map[netlink.MacvlanMode]string{netlink.MACVLAN_MODE_BRIDGE: "bridge", netlink.MACVLAN_MODE_PRIVATE: "private", netlink.MACVLAN_MODE_VEPA: "vepa", netlink.MACVLAN_MODE_PASSTHRU: "passthru"}[c.Mode]
		case *netlink.IPVlan:
			got += map[netlink.IPVlanMode]string{netlink.IPVLAN_MODE_L2: "l2", netlink.IPVLAN_MODE_L3: "l3", netlink.IPVLAN_MODE_L3S: "l3s"}[c.Mode]
		}
		a := l.Attrs()
		if got != tc.want || !bytes.Equal(a.HardwareAddr, tc.mac) || a.ParentIndex != 7 || a.MTU != 1400 || a.Name != "eth0" || a.Namespace != netlink.NsFd(3) {
			t.Errorf("%s %q: %s MAC %s attrs %+v", tc.driver, tc.mode, got, a.HardwareAddr, a)
		}
		if isL3(n) != (tc.mode == "l3" || tc.mode == "l3s") {
			t.Errorf("%s %q: isL3 = %v", tc.driver, tc.mode, isL3(n))
		}
	}
	parentLink := &netlink.Device{LinkAttrs: netlink.LinkAttrs{MTU: 1500}}
	for mtu, want := range map[int]int{0: 1500, 1400: 1400, 1500: 1500, 9000: 1500} {
		if got := childMTU(datapath.Network{MTU: mtu}, parentLink); got != want {
			t.Errorf("childMTU(network %d, parent 1500) = %d, want %d", mtu, got, want)
		}
	}
}

// TestDeviceDefaultRoute checks the gateway-less default route that ipvlan
// l3/l3s endpoints get (route code only; any link kind will do).
func TestDeviceDefaultRoute(t *testing.T) {
	t.Parallel()
	s, p := netnstest.New(t, "fks")
	netnstest.Run(t, s, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth9")
	netnstest.Run(t, s, "ip", "link", "set", "eth0", "up")
	netnstest.Run(t, s, "ip", "link", "set", "eth9", "up")
	netnstest.Run(t, s, "ip", "addr", "add", "10.90.11.2/24", "dev", "eth0")
	h := netnstest.Handle(t, p)
	defer h.Close()
	link, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := ensureDefaultRoute(h, link, netip.Addr{}, true); err != nil {
			t.Fatal(err)
		}
		if got := routes(t, s, "default"); got != "default dev eth0 scope link" {
			t.Fatalf("device default route: %q", got)
		}
	}
	// Switching to a gateway replaces it; want=false removes it.
	if err := ensureDefaultRoute(h, link, netip.MustParseAddr("10.90.11.1"), true); err != nil {
		t.Fatal(err)
	}
	if got := routes(t, s, "default"); got != "default via 10.90.11.1 dev eth0" {
		t.Fatalf("gateway default route: %q", got)
	}
	if err := ensureDefaultRoute(h, link, netip.Addr{}, false); err != nil {
		t.Fatal(err)
	}
	if got := routes(t, s, "default"); got != "" {
		t.Fatalf("default route left: %q", got)
	}
}

// TestChildNameTakenOnHost: the host has its own eth0 and the endpoint's
// eth0 is made anyway (directly on newer kernels, through a temporary name

// routes returns `ip -4 route show ARGS` in the named namespace, trimmed.
func routes(t *testing.T, nsName string, args ...string) string {
	t.Helper()
	return strings.TrimSpace(netnstest.Run(t, nsName, append([]string{"ip", "-4", "route", "show"}, args...)...))
}
