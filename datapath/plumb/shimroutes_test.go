package plumb

import (
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/fabricnet/fabric/datapath"
)

func TestShimRoutesOf(t *testing.T) {
	resolver, other := netip.MustParseAddr("169.254.53.53"), netip.MustParseAddr("192.0.2.7")
	addrs := []netip.Addr{resolver, other, netip.MustParseAddr("10.1.0.9"), netip.MustParseAddr("fd00::53")}
	shim := netip.MustParseAddr("10.1.0.254")
	for _, tc := range []struct {
		name string
		n    datapath.Network
		want []netip.Addr
	}{
		{"macvlan with a shim", datapath.Network{Driver: datapath.DriverMacvlan, HostShim: shim}, []netip.Addr{resolver, other}},
		{"ipvlan l2 with a shim", datapath.Network{Driver: datapath.DriverIPvlan, Mode: "l2", HostShim: shim}, []netip.Addr{resolver, other}},
		{"macvlan without a shim", datapath.Network{Driver: datapath.DriverMacvlan}, nil},
		{"ipvlan l3: the host routes", datapath.Network{Driver: datapath.DriverIPvlan, Mode: "l3", HostShim: shim}, nil},
		{"ipvlan l3s: the host routes", datapath.Network{Driver: datapath.DriverIPvlan, Mode: "l3s", HostShim: shim}, nil},
	} {
		tc.n.Subnet = netip.MustParsePrefix("10.1.0.0/24") // 10.1.0.9 is on the LAN: no route
		got := slices.SortedFunc(maps.Keys(shimRoutesOf(tc.n, addrs)), netip.Addr.Compare)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
