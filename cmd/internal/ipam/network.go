package ipam

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Subnet size limits. A /31 or /32 has no room for a gateway plus an
// endpoint; anything larger than a /8 is almost certainly a typo.
const (
	MinPrefixBits = 8
	MaxPrefixBits = 30
)

// ValidateNetwork checks a network's addressing before anything is created.
// subnet is required; gateway and ipRange are optional (pass the zero value
// to leave them unset). The rules follow Docker's: the subnet is a masked
// IPv4 prefix between /8 and /30, the gateway is a usable address inside
// it, and the ip-range is a masked prefix inside it.
func ValidateNetwork(subnet netip.Prefix, gateway netip.Addr, ipRange netip.Prefix) error {
	if err := validateSubnet(subnet); err != nil {
		return err
	}
	if gateway.IsValid() {
		if err := validateGateway(subnet, gateway); err != nil {
			return err
		}
	}
	if ipRange.IsValid() {
		if err := validateRange(subnet, ipRange); err != nil {
			return err
		}
	}
	return nil
}

func validateSubnet(subnet netip.Prefix) error {
	switch {
	case !subnet.IsValid():
		return fmt.Errorf("%w: subnet is required (for example 10.10.0.0/24)", ErrInvalidNetwork)
	case !subnet.Addr().Is4():
		return fmt.Errorf("%w: subnet %s is not IPv4; only IPv4 is supported", ErrInvalidNetwork, subnet)
	case subnet.Bits() < MinPrefixBits || subnet.Bits() > MaxPrefixBits:
		return fmt.Errorf("%w: subnet %s: prefix length must be between /%d and /%d",
			ErrInvalidNetwork, subnet, MinPrefixBits, MaxPrefixBits)
	case subnet != subnet.Masked():
		return fmt.Errorf("%w: subnet %s has host bits set; use %s",
			ErrInvalidNetwork, subnet, subnet.Masked())
	}
	return nil
}

func validateGateway(subnet netip.Prefix, gateway netip.Addr) error {
	switch {
	case !gateway.Is4():
		return fmt.Errorf("%w: gateway %s is not IPv4; only IPv4 is supported", ErrInvalidNetwork, gateway)
	case !subnet.Contains(gateway):
		return fmt.Errorf("%w: gateway %s is outside subnet %s", ErrInvalidNetwork, gateway, subnet)
	case gateway == networkAddr(subnet):
		return fmt.Errorf("%w: gateway %s is the network address of %s; use a host address such as %s",
			ErrInvalidNetwork, gateway, subnet, DefaultGateway(subnet))
	case gateway == broadcastAddr(subnet):
		return fmt.Errorf("%w: gateway %s is the broadcast address of %s; use a host address such as %s",
			ErrInvalidNetwork, gateway, subnet, DefaultGateway(subnet))
	}
	return nil
}

func validateRange(subnet, ipRange netip.Prefix) error {
	switch {
	case !ipRange.Addr().Is4():
		return fmt.Errorf("%w: ip-range %s is not IPv4; only IPv4 is supported", ErrInvalidNetwork, ipRange)
	case ipRange != ipRange.Masked():
		return fmt.Errorf("%w: ip-range %s has host bits set; use %s",
			ErrInvalidNetwork, ipRange, ipRange.Masked())
	case ipRange.Bits() < subnet.Bits() || !subnet.Contains(ipRange.Addr()):
		return fmt.Errorf("%w: ip-range %s is not inside subnet %s", ErrInvalidNetwork, ipRange, subnet)
	}
	return nil
}

// DefaultGateway returns the gateway Docker picks when none is given: the
// first usable address of the subnet (10.0.0.1 for 10.0.0.0/24). It returns
// the zero Addr for an invalid or non-IPv4 prefix.
func DefaultGateway(subnet netip.Prefix) netip.Addr {
	if !subnet.IsValid() || !subnet.Addr().Is4() {
		return netip.Addr{}
	}
	return networkAddr(subnet).Next()
}

func networkAddr(p netip.Prefix) netip.Addr { return p.Masked().Addr() }

func broadcastAddr(p netip.Prefix) netip.Addr {
	return u32ToAddr(addrToU32(networkAddr(p)) | hostMask(p))
}

// hostMask is the mask of the host bits of an IPv4 prefix.
func hostMask(p netip.Prefix) uint32 {
	return uint32(uint64(1)<<(32-p.Bits()) - 1)
}

func addrToU32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func u32ToAddr(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}
