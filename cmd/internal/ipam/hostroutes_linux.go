package ipam

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
)

// dumpRetries bounds how often a netlink dump is repeated when the kernel
// reports it was interrupted by a concurrent change.
const dumpRetries = 5

// HostRoutes returns the IPv4 destinations of the current network
// namespace: the main routing table's routes and the prefixes of the local
// addresses, without the default route. A network whose subnet overlaps
// one of them would shadow or be shadowed by the host's own traffic, so
// PickSubnet treats them as taken.
func HostRoutes() ([]netip.Prefix, error) {
	return hostRoutes(netlink.RouteList, netlink.AddrList)
}

// HostRoutesIn is HostRoutes for the namespace of a netlink handle, for an
// agent that programs a namespace other than its own.
func HostRoutesIn(h *netlink.Handle) ([]netip.Prefix, error) {
	if h == nil {
		return HostRoutes()
	}
	return hostRoutes(h.RouteList, h.AddrList)
}

func hostRoutes(
	listRoutes func(netlink.Link, int) ([]netlink.Route, error),
	listAddrs func(netlink.Link, int) ([]netlink.Addr, error),
) ([]netip.Prefix, error) {
	routes, err := retryDump(func() ([]netlink.Route, error) { return listRoutes(nil, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return listAddrs(nil, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}

	var out []netip.Prefix
	add := func(n *net.IPNet) {
		p, ok := ipNetToPrefix(n)
		if !ok || p.Bits() == 0 { // the default route collides with nothing
			return
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	for _, r := range routes {
		add(r.Dst) // nil Dst is the default route
	}
	for _, a := range addrs {
		add(a.IPNet)
	}
	return out, nil
}

func ipNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, bitLen := n.Mask.Size()
	if !a.Is4() || bitLen == 0 {
		return netip.Prefix{}, false
	}
	if bitLen == 128 { // a 16-byte mask for an IPv4 address
		ones -= 96
	}
	return netip.PrefixFrom(a, ones).Masked(), true
}

// retryDump repeats a netlink dump that the kernel interrupted because the
// table changed underneath it; a partial list could hide a route.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var err error
	for range dumpRetries {
		var res []T
		res, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return res, err
		}
	}
	return nil, err
}
