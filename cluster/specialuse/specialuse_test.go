package specialuse

import (
	"net/netip"
	"testing"
)

func TestOverlapping(t *testing.T) {
	for subnet, want := range map[string]string{
		"0.0.0.0/16":       `"this network" (0.0.0.0/8)`,
		"127.1.0.0/16":     "loopback (127.0.0.0/8)",
		"169.254.0.0/24":   "link-local (169.254.0.0/16)",
		"224.0.0.0/8":      "multicast (224.0.0.0/4)",
		"239.255.0.0/16":   "multicast (224.0.0.0/4)",
		"240.0.0.0/24":     "reserved and broadcast (240.0.0.0/4)",
		"255.255.255.0/24": "reserved and broadcast (240.0.0.0/4)",
		"0.0.0.0/0":        `"this network" (0.0.0.0/8)`,
		"10.0.0.0/8":       "",
		"126.0.0.0/8":      "",
		"169.253.0.0/16":   "",
		"223.255.0.0/16":   "",
		"192.168.0.0/16":   "",
	} {
		r, ok := Overlapping(netip.MustParsePrefix(subnet))
		got := ""
		if ok {
			got = r.String()
		}
		if got != want {
			t.Errorf("Overlapping(%s) = %q, want %q", subnet, got, want)
		}
	}
}
