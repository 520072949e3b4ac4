package ipam

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestHostRoutes(t *testing.T) {
	routes, err := HostRoutes()
	if err != nil {
		t.Fatalf("HostRoutes: %v", err)
	}
	seen := make(map[netip.Prefix]bool)
	for _, r := range routes {
		if !r.Addr().Is4() {
			t.Errorf("non-IPv4 prefix %s", r)
		}
		if r.Bits() == 0 {
			t.Errorf("default route %s returned", r)
		}
		if r != r.Masked() {
			t.Errorf("prefix %s not masked", r)
		}
		if seen[r] {
			t.Errorf("prefix %s returned twice", r)
		}
		seen[r] = true
	}
	t.Logf("host routes: %v", routes)

	if _, err := HostRoutesIn(nil); err != nil {
		t.Fatalf("HostRoutesIn(nil): %v", err)
	}
	h, err := netlink.NewHandle()
	if err != nil {
		t.Fatalf("netlink.NewHandle: %v", err)
	}
	defer h.Close()
	viaHandle, err := HostRoutesIn(h)
	if err != nil {
		t.Fatalf("HostRoutesIn(handle): %v", err)
	}
	for _, r := range viaHandle {
		if r.Bits() == 0 || !r.Addr().Is4() {
			t.Errorf("HostRoutesIn returned %s", r)
		}
	}
}

func TestIPNetToPrefix(t *testing.T) {
	tests := []struct {
		name string
		in   *net.IPNet
		want string // "" means rejected
	}{
		{"nil", nil, ""},
		{"v4", &net.IPNet{IP: net.IPv4(10, 1, 2, 3).To4(), Mask: net.CIDRMask(16, 32)}, "10.1.0.0/16"},
		{"v4 in 16 bytes", &net.IPNet{IP: net.IPv4(10, 1, 2, 3), Mask: net.CIDRMask(24, 32)}, "10.1.2.0/24"},
		{"v4 with 16 byte mask", &net.IPNet{IP: net.IPv4(10, 1, 2, 3), Mask: net.CIDRMask(96+8, 128)}, "10.0.0.0/8"},
		{"default", &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, "0.0.0.0/0"},
		{"v6", &net.IPNet{IP: net.ParseIP("fd00::1"), Mask: net.CIDRMask(64, 128)}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ipNetToPrefix(tt.in)
			if tt.want == "" {
				if ok {
					t.Fatalf("ipNetToPrefix = %s, want rejection", got)
				}
				return
			}
			if !ok || got != netip.MustParsePrefix(tt.want) {
				t.Fatalf("ipNetToPrefix = %s, %v; want %s", got, ok, tt.want)
			}
		})
	}
}
