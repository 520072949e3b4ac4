// Package ipam manages IPv4 addresses for the networks of one host, with
// Docker's semantics: a network has a subnet, a gateway, an optional
// ip-range that dynamic allocations are drawn from, and static addresses
// that may be claimed anywhere in the subnet.
//
// The package only does arithmetic on addresses. It knows nothing about
// links, namespaces, the store or the API: the agent decides which
// addresses are taken when it rebuilds pools after a restart, and it maps
// the sentinel errors below to API status codes. The one exception,
// HostRoutes, reads the kernel's routes so the agent can pick subnets that
// do not collide with the host; it lives in its own file.
//
// IPv6 is not supported yet; every function rejects IPv6 input with an
// error instead of silently ignoring it.
package ipam

import "errors"

// Sentinel errors. Every error returned by this package wraps one of them,
// so callers can test with errors.Is and map them to status codes.
var (
	// ErrInvalidNetwork: a subnet, gateway or ip-range is malformed or
	// inconsistent (host bits set, IPv6, gateway outside the subnet, ...).
	ErrInvalidNetwork = errors.New("invalid network")
	// ErrExhausted: no dynamic address is left in the pool's ip-range.
	ErrExhausted = errors.New("address pool exhausted")
	// ErrOutOfSubnet: a requested address is not in the network's subnet.
	ErrOutOfSubnet = errors.New("address out of subnet")
	// ErrReserved: a requested address is the network or broadcast
	// address, the gateway, or an excluded address.
	ErrReserved = errors.New("address reserved")
	// ErrInUse: a requested address is already assigned to someone else.
	ErrInUse = errors.New("address in use")
	// ErrNoFreeSubnet: every candidate subnet overlaps a taken prefix.
	ErrNoFreeSubnet = errors.New("no free subnet")
)
