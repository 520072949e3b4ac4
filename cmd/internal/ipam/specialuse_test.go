package ipam

import (
	"errors"
	"net/netip"
	"testing"
)

func TestCheckSpecialUse(t *testing.T) {
	for subnet, bad := range map[string]bool{
		"0.0.0.0/8": true, "0.1.0.0/16": true, "127.0.0.0/8": true, "127.5.0.0/24": true,
		"169.254.0.0/16": true, "169.254.169.0/24": true, "224.0.0.0/8": true, "239.1.0.0/16": true,
		"240.0.0.0/4": true, "255.255.255.0/24": true, "250.0.0.0/8": true,
		"128.0.0.0/1": true, // contains 169.254/16 and more
		"10.0.0.0/8":  false, "172.16.0.0/12": false, "192.168.1.0/24": false, "100.64.0.0/10": false,
		"169.253.0.0/16": false, "223.255.255.0/24": false, "1.0.0.0/8": false,
	} {
		err := CheckSpecialUse(netip.MustParsePrefix(subnet))
		if bad != (err != nil) {
			t.Errorf("CheckSpecialUse(%s) = %v, want refused=%v", subnet, err, bad)
		}
		if err != nil && !errors.Is(err, ErrInvalidNetwork) {
			t.Errorf("%s: %v does not wrap ErrInvalidNetwork", subnet, err)
		}
	}
}
