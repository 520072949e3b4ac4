package cluster

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"

	"github.com/fabricnet/fabric/cluster/specialuse"
)

// Sentinel errors. Every error the package returns for an expected state
// wraps one of them, so the agent can test with errors.Is and map them to
// API status codes.
var (
	// ErrConflict: the request clashes with cluster state: a network with
	// the same name, an overlapping subnet or the same VNI; a block or an
	// address already held by another node.
	ErrConflict = errors.New("conflict")
	// ErrNotFound: no such network, endpoint or lease.
	ErrNotFound = errors.New("not found")
	// ErrInvalid: a malformed spec, key, address or record.
	ErrInvalid = errors.New("invalid")
	// ErrInUse: the network still has endpoints, or the block addresses.
	ErrInUse = errors.New("in use")
	// ErrExhausted: no free block or address is left.
	ErrExhausted = errors.New("exhausted")
	// ErrKeyMismatch: the gossip keys of this node and its peer differ (or
	// one side has none), so they cannot talk.
	ErrKeyMismatch = errors.New("gossip key mismatch")
	// ErrUnreachable: some members did not answer in time.
	ErrUnreachable = errors.New("members unreachable")
	// ErrClosed: the cluster has been closed.
	ErrClosed = errors.New("cluster closed")
)

// Limits enforced on every record, local or received.
const (
	maxNodeName   = 128
	maxNetName    = 64
	maxEndpointID = 128
	maxDNSName    = 253
	maxAliases    = 32
	maxOptions    = 32
	maxOptionLen  = 255
	maxLabel      = 255
	maxVNI        = 1<<24 - 1
)

// minSubnetBits is the largest overlay subnet, /8: a /0../7 record (one
// 0.0.0.0/0 record used to clash with, and so remove, every overlay) is
// refused, locally and from gossip.
const minSubnetBits = 8

var netNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// NetworkID names one create of a network: the lamport clock of the create
// and the node it came from. Two creates never share an ID, and the order of
// IDs decides which of two clashing creates wins.
type NetworkID struct {
	Clock uint64
	Node  string
}

func (id NetworkID) String() string { return strconv.FormatUint(id.Clock, 10) + "@" + id.Node }

func (id NetworkID) less(o NetworkID) bool {
	if id.Clock != o.Clock {
		return id.Clock < o.Clock
	}
	return id.Node < o.Node
}

// NetworkSpec is what CreateNetwork is asked for.
type NetworkSpec struct {
	Name   string
	Subnet netip.Prefix // IPv4 only for now
	// Gateway is reserved in the subnet; zero means the first address.
	Gateway netip.Addr
	// BlockBits is the prefix length of the blocks nodes lease. Zero means
	// 24, or subnet bits + 4 (at most 28) when the subnet is smaller than a
	// /20, so that even a small subnet is shared by several nodes.
	BlockBits int
	// VNI is the VXLAN network identifier; zero picks a free one.
	VNI      uint32
	Internal bool
	Options  map[string]string
}

// Network is an accepted cluster-scoped network.
type Network struct {
	ID NetworkID
	NetworkSpec
}

// Endpoint is the record of one endpoint, published by the node it lives on.
type Endpoint struct {
	ID      string
	Network string // network name
	Node    string // set by Publish to the local node
	IP      netip.Addr
	MAC     net.HardwareAddr
	Name    string
	Aliases []string
}

// Lease is a block of a network's subnet held by one node.
type Lease struct {
	Network string
	Block   netip.Prefix
	Node    string
}

// Claim is a static address held by one node for an owner (an endpoint).
type Claim struct {
	Network string
	IP      netip.Addr
	Node    string
	Owner   string
}

func validNodeName(s string) error {
	if s == "" || len(s) > maxNodeName {
		return fmt.Errorf("node name must be 1-%d bytes", maxNodeName)
	}
	return checkText(s)
}

func validNetName(s string) error {
	if len(s) == 0 || len(s) > maxNetName || !netNameRE.MatchString(s) {
		return fmt.Errorf("network name %q must be 1-%d characters of [a-zA-Z0-9_.-], starting with a letter or digit", s, maxNetName)
	}
	return nil
}

// defaultBlockBits is the block size used when a spec leaves it at zero.
func defaultBlockBits(subnet netip.Prefix) int {
	if subnet.Bits() <= 20 {
		return 24
	}
	return min(subnet.Bits()+4, 28)
}

// normalize fills defaults and checks a spec; it is used both for local
// creates (before the VNI is picked) and for received records.
func (s *NetworkSpec) normalize() error {
	if err := validNetName(s.Name); err != nil {
		return err
	}
	if !s.Subnet.IsValid() || !s.Subnet.Addr().Is4() {
		return fmt.Errorf("network %q: subnet %v must be an IPv4 prefix (IPv6 is not supported yet)", s.Name, s.Subnet)
	}
	if s.Subnet.Masked() != s.Subnet {
		return fmt.Errorf("network %q: subnet %s has host bits set; did you mean %s?", s.Name, s.Subnet, s.Subnet.Masked())
	}
	if s.Subnet.Bits() > 30 {
		return fmt.Errorf("network %q: subnet %s is too small for an overlay (at most /30)", s.Name, s.Subnet)
	}
	if s.Subnet.Bits() < minSubnetBits {
		return fmt.Errorf("network %q: subnet %s is too large for an overlay (at least /%d): it would cover the host's own routes", s.Name, s.Subnet, minSubnetBits)
	}
	// No overlay subnet may touch a special-use range, whoever proposes
	// it: they are not unicast addresses a sandbox can hold. (The agent
	// checks more, such as the host's own routes.)
	if r, ok := specialuse.Overlapping(s.Subnet); ok {
		return fmt.Errorf("network %q: subnet %s overlaps %s, which cannot be an overlay subnet", s.Name, s.Subnet, r)
	}
	if s.BlockBits == 0 {
		s.BlockBits = defaultBlockBits(s.Subnet)
	}
	if s.BlockBits < s.Subnet.Bits() || s.BlockBits > 30 {
		return fmt.Errorf("network %q: block size /%d must be between /%d (the subnet) and /30", s.Name, s.BlockBits, s.Subnet.Bits())
	}
	if !s.Gateway.IsValid() {
		s.Gateway = s.Subnet.Addr().Next()
	}
	if !s.Subnet.Contains(s.Gateway) {
		return fmt.Errorf("network %q: gateway %s is outside subnet %s", s.Name, s.Gateway, s.Subnet)
	}
	if s.VNI > maxVNI {
		return fmt.Errorf("network %q: VNI %d exceeds %d", s.Name, s.VNI, maxVNI)
	}
	if len(s.Options) > maxOptions {
		return fmt.Errorf("network %q: %d options, at most %d", s.Name, len(s.Options), maxOptions)
	}
	for k, v := range s.Options {
		if k == "" || len(k) > maxOptionLen || len(v) > maxOptionLen || checkText(k) != nil || checkText(v) != nil {
			return fmt.Errorf("network %q: option %q must be printable text of at most %d bytes", s.Name, k, maxOptionLen)
		}
	}
	if len(s.Options) == 0 {
		s.Options = nil
	}
	return nil
}

// clashes reports why two networks cannot both exist, or "".
func (s *NetworkSpec) clashes(o *NetworkSpec) string {
	switch {
	case s.Name == o.Name:
		return "same name"
	case s.Subnet.Overlaps(o.Subnet):
		return fmt.Sprintf("subnet %s overlaps %s", s.Subnet, o.Subnet)
	case s.VNI != 0 && s.VNI == o.VNI:
		return fmt.Sprintf("same VNI %d", s.VNI)
	}
	return ""
}

// reserved reports whether an address of the network is never handed out.
func (s *NetworkSpec) reserved(a netip.Addr) bool {
	return a == s.Subnet.Addr() || a == lastAddr(s.Subnet) || a == s.Gateway
}

func (e *Endpoint) validate() error {
	switch {
	case e.ID == "" || len(e.ID) > maxEndpointID || checkText(e.ID) != nil:
		return fmt.Errorf("endpoint ID must be 1-%d printable bytes", maxEndpointID)
	case validNodeName(e.Node) != nil:
		return fmt.Errorf("endpoint %s: bad node name %q", e.ID, e.Node)
	case validNetName(e.Network) != nil:
		return fmt.Errorf("endpoint %s: %w", e.ID, validNetName(e.Network))
	case !e.IP.IsValid():
		return fmt.Errorf("endpoint %s: missing IP", e.ID)
	case len(e.MAC) != 0 && len(e.MAC) != 6:
		return fmt.Errorf("endpoint %s: MAC must be 6 bytes", e.ID)
	case len(e.Name) > maxDNSName || checkText(e.Name) != nil:
		return fmt.Errorf("endpoint %s: bad name", e.ID)
	case len(e.Aliases) > maxAliases:
		return fmt.Errorf("endpoint %s: %d aliases, at most %d", e.ID, len(e.Aliases), maxAliases)
	}
	for _, a := range e.Aliases {
		if a == "" || len(a) > maxDNSName || checkText(a) != nil {
			return fmt.Errorf("endpoint %s: bad alias %q", e.ID, a)
		}
	}
	return nil
}

func (e Endpoint) equal(o Endpoint) bool {
	if e.ID != o.ID || e.Network != o.Network || e.Node != o.Node || e.IP != o.IP ||
		string(e.MAC) != string(o.MAC) || e.Name != o.Name || len(e.Aliases) != len(o.Aliases) {
		return false
	}
	for i := range e.Aliases {
		if e.Aliases[i] != o.Aliases[i] {
			return false
		}
	}
	return true
}

func (e Endpoint) clone() Endpoint {
	e.MAC = append(net.HardwareAddr(nil), e.MAC...)
	e.Aliases = append([]string(nil), e.Aliases...)
	if len(e.MAC) == 0 {
		e.MAC = nil
	}
	if len(e.Aliases) == 0 {
		e.Aliases = nil
	}
	return e
}

func (n Network) clone() Network {
	if n.Options != nil {
		o := make(map[string]string, len(n.Options))
		for k, v := range n.Options {
			o[k] = v
		}
		n.Options = o
	}
	return n
}

func lastAddr(p netip.Prefix) netip.Addr {
	return u32Addr(addrU32(p.Masked().Addr()) | (uint32(1)<<(32-p.Bits()) - 1))
}
