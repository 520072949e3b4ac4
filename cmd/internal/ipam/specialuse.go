package ipam

import (
	"fmt"
	"net/netip"
)

// specialUse are the IPv4 ranges (RFC 6890) a container network must not
// take: hosts treat them specially, so a network there would break the
// host (loopback, link-local services such as cloud metadata), never be
// routed (0.0.0.0/8, reserved), or turn unicast into multicast or
// broadcast.
var specialUse = []struct {
	prefix netip.Prefix
	what   string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "\"this network\" (0.0.0.0/8)"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback (127.0.0.0/8)"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local (169.254.0.0/16)"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast (224.0.0.0/4)"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved and broadcast (240.0.0.0/4)"},
}

// CheckSpecialUse refuses a subnet that overlaps a special-use range. It is
// separate from ValidateNetwork so that a network stored before the check
// existed still loads (and can be removed).
func CheckSpecialUse(subnet netip.Prefix) error {
	for _, s := range specialUse {
		if Overlaps(s.prefix, subnet) {
			return fmt.Errorf("%w: subnet %s overlaps the %s range, which hosts treat specially; pick a private range such as 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16",
				ErrInvalidNetwork, subnet, s.what)
		}
	}
	return nil
}
