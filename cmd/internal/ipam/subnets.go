package ipam

import (
	"fmt"
	"net/netip"
)

// DefaultPools returns the candidate subnets for networks created without
// --subnet, in the order they are tried. It mirrors Docker's default
// address pools: 172.17.0.0/16 through 172.31.0.0/16, then
// 192.168.0.0/20 through 192.168.240.0/20.
func DefaultPools() []netip.Prefix {
	pools := make([]netip.Prefix, 0, 15+16)
	for second := 17; second <= 31; second++ {
		pools = append(pools, netip.PrefixFrom(netip.AddrFrom4([4]byte{172, byte(second), 0, 0}), 16))
	}
	for third := 0; third <= 240; third += 16 {
		pools = append(pools, netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(third), 0}), 20))
	}
	return pools
}

// Overlaps reports whether two prefixes share at least one address. Host
// bits are ignored; prefixes of different families never overlap.
func Overlaps(a, b netip.Prefix) bool {
	if !a.IsValid() || !b.IsValid() {
		return false
	}
	return a.Masked().Overlaps(b.Masked())
}

// PickSubnet returns the first candidate that overlaps none of taken (the
// host's routes and the subnets of existing networks). A taken prefix may
// be larger than a candidate (a /8 route hides several pools) or smaller
// (a /24 route inside a /16 pool still disqualifies the whole pool).
func PickSubnet(candidates []netip.Prefix, taken []netip.Prefix) (netip.Prefix, error) {
next:
	for _, c := range candidates {
		if !c.IsValid() {
			continue
		}
		for _, t := range taken {
			if Overlaps(c, t) {
				continue next
			}
		}
		return c.Masked(), nil
	}
	return netip.Prefix{}, fmt.Errorf("%w: all %d candidate subnets overlap host routes or existing networks; pass a subnet explicitly",
		ErrNoFreeSubnet, len(candidates))
}
