// Package specialuse lists the IPv4 ranges (RFC 6890) that no container
// network may take, local or overlay: hosts treat them specially, so a
// network there would break the host (loopback, link-local services such
// as cloud metadata), never be routed (0.0.0.0/8, reserved), or turn
// unicast into multicast or broadcast.
//
// It is the one list both the cluster (overlay subnets, whoever proposes
// them) and the agent's address management (local subnets) check against,
// so it imports nothing of either.
package specialuse

import "net/netip"

// Range is one special-use range and what hosts use it for.
type Range struct {
	Prefix netip.Prefix
	What   string
}

// String is "what (prefix)", as error messages name a range.
func (r Range) String() string { return r.What + " (" + r.Prefix.String() + ")" }

// Ranges are the special-use IPv4 ranges, in address order.
var Ranges = []Range{
	{netip.MustParsePrefix("0.0.0.0/8"), `"this network"`},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved and broadcast"},
}

// Overlapping returns the first special-use range that subnet overlaps,
// and false if it overlaps none.
func Overlapping(subnet netip.Prefix) (Range, bool) {
	for _, r := range Ranges {
		if r.Prefix.Overlaps(subnet) {
			return r, true
		}
	}
	return Range{}, false
}
