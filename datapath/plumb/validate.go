package plumb

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
)

// MaxVNI is the largest VXLAN network identifier (24 bits).
const MaxVNI = 1<<24 - 1

// defaultMTU is used when a network leaves its MTU at zero.
const defaultMTU = 1500

// dumpAttempts bounds retries of a netlink dump the kernel interrupted
// because the table changed underneath it.
const dumpAttempts = 5

func MTUOf(n datapath.Network) int {
	if n.MTU == 0 {
		return defaultMTU
	}
	return n.MTU
}

func OwnerAlias(id string) string { return datapath.OwnerPrefix + id }

func Invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", datapath.ErrInvalid, fmt.Sprintf(format, args...))
}

func ValidIfName(name string) error {
	if name == "" || len(name) > 15 {
		return fmt.Errorf("interface name %q must be 1 to 15 characters", name)
	}
	if name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n\x00") {
		return fmt.Errorf("interface name %q must not be '.', '..' or contain '/', ':' or spaces", name)
	}
	return nil
}

func ValidateNetwork(n datapath.Network) error {
	if n.ID == "" {
		return Invalidf("network without ID")
	}
	switch n.Driver {
	case "", datapath.DriverBridge:
	case datapath.DriverOverlay:
		if n.VNI == 0 || n.VNI > MaxVNI {
			return Invalidf("network %s: overlay VNI %d must be 1 to %d", n.ID, n.VNI, MaxVNI)
		}
	case datapath.DriverMacvlan, datapath.DriverIPvlan:
		return validateParentNetwork(n)
	default:
		return Invalidf("network %s: driver %q is not handled by fabric's datapaths", n.ID, n.Driver)
	}
	if err := ValidIfName(n.Bridge); err != nil {
		return Invalidf("network %s: bridge: %v", n.ID, err)
	}
	return validateAddressing(n)
}

// validateAddressing checks what every driver needs: an IPv4 subnet with
// the gateway inside, and a sane MTU.
func validateAddressing(n datapath.Network) error {
	if !n.Subnet.IsValid() || !n.Subnet.Addr().Is4() {
		return Invalidf("network %s: subnet %s must be an IPv4 prefix", n.ID, n.Subnet)
	}
	if !n.Gateway.Is4() || !n.Subnet.Contains(n.Gateway) {
		return Invalidf("network %s: gateway %s must be an IPv4 address inside %s", n.ID, n.Gateway, n.Subnet)
	}
	if n.MTU != 0 && (n.MTU < 68 || n.MTU > 65535) {
		return Invalidf("network %s: MTU %d must be between 68 and 65535", n.ID, n.MTU)
	}
	return nil
}

func ValidateEndpoint(n datapath.Network, ep datapath.Endpoint) error {
	if ep.ID == "" {
		return Invalidf("endpoint without ID")
	}
	if ep.NetworkID != "" && ep.NetworkID != n.ID {
		return Invalidf("endpoint %s belongs to network %s, not %s", ep.ID, ep.NetworkID, n.ID)
	}
	if ep.NetNSPath == "" {
		return Invalidf("endpoint %s: no sandbox namespace", ep.ID)
	}
	if err := ValidIfName(ep.IfName); err != nil {
		return Invalidf("endpoint %s: sandbox interface: %v", ep.ID, err)
	}
	if !UsesParent(n) {
		if err := ValidIfName(ep.HostIfName); err != nil {
			return Invalidf("endpoint %s: host interface: %v", ep.ID, err)
		}
	} else if len(ep.Ports) > 0 {
		return Invalidf("endpoint %s: a %s endpoint has its own address on the LAN; publishing ports on the host makes no sense for it", ep.ID, n.Driver)
	}
	a := ep.Addr.Addr()
	if !ep.Addr.IsValid() || !a.Is4() || !n.Subnet.Contains(a) || a == n.Gateway || isNetOrBroadcast(n.Subnet, a) {
		return Invalidf("endpoint %s: address %s must be a host address in %s other than the gateway", ep.ID, ep.Addr, n.Subnet)
	}
	if a == n.HostShim {
		return Invalidf("endpoint %s: address %s is the network's host shim address", ep.ID, a)
	}
	if ep.Addr.Bits() != n.Subnet.Bits() {
		return Invalidf("endpoint %s: address %s must have the network's prefix length /%d", ep.ID, ep.Addr, n.Subnet.Bits())
	}
	if ep.MAC != nil && (len(ep.MAC) != 6 || ep.MAC[0]&1 != 0) {
		return Invalidf("endpoint %s: MAC %s must be a unicast Ethernet address", ep.ID, ep.MAC)
	}
	for _, p := range ep.Ports {
		if p.Proto != "tcp" && p.Proto != "udp" {
			return Invalidf("endpoint %s: port protocol %q must be tcp or udp", ep.ID, p.Proto)
		}
		if p.HostPort == 0 || p.Port == 0 {
			return Invalidf("endpoint %s: published ports must be non-zero", ep.ID)
		}
		if p.HostIP.IsValid() && !p.HostIP.Is4() {
			return Invalidf("endpoint %s: host IP %s must be IPv4", ep.ID, p.HostIP)
		}
	}
	return nil
}

// isNetOrBroadcast reports whether a is the network or broadcast address
// of p (which /31 and /32 prefixes do not have).
func isNetOrBroadcast(p netip.Prefix, a netip.Addr) bool {
	if p.Bits() >= 31 {
		return false
	}
	p = p.Masked()
	if a == p.Addr() {
		return true
	}
	b := p.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return a == netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func IsNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// RetryDump runs a netlink dump again while the kernel reports that it was
// interrupted by a concurrent change (containernetworking's netlinksafe).
func RetryDump[T any](dump func() (T, error)) (T, error) {
	var (
		res T
		err error
	)
	for range dumpAttempts {
		res, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return res, err
		}
	}
	return res, fmt.Errorf("netlink dump still interrupted after %d attempts: %w", dumpAttempts, err)
}
