// Package lab builds a local multi-host fabric out of network namespaces:
// N "hosts" (namespaces with an eth0 on a shared underlay bridge and a
// default route), each running its own fabricd with its own state dir,
// socket, bpf-root and node name, joined into one cluster. It is what
// `fabricctl lab up|status|exec|down` drives, and what tests and demos use
// to get several hosts on one machine.
//
// Everything a lab makes is named in its manifest (DIR/NAME/lab.json),
// which is written before the first object is created, so Down can remove
// a lab that Up, the agents or Down itself left half-made.
//
// Agents are started with only the network namespace switched (setns on a
// locked thread, as `nsenter --net` does), never through `ip netns exec`,
// which would give them a private /sys and with it a fresh bpffs in which
// their pins would not outlive them.
//
// The package talks to agents only through the API (cmd/internal/api). The
// one exception is Down after a crash, which reads a dead agent's state
// file (cmd/internal/store) to find the sandbox namespaces it made. It
// knows nothing of datapaths, eBPF or the agent's internals.
package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
)

// Defaults and limits of `lab up`.
const (
	DefaultName     = "lab"
	DefaultNodes    = 3
	MaxNodes        = 16
	DefaultDatapath = "auto"
	// DefaultRoot holds one directory per lab. It is on tmpfs, like
	// everything a lab makes (namespaces, bpffs pins): a reboot removes all
	// of it together.
	DefaultRoot = "/run/fabric/lab"
	// BPFDir is the bpffs mount under which each node gets its bpf-root.
	BPFDir = "/sys/fs/bpf"
	// maxName keeps every derived name within its limit: socket paths
	// (107 bytes), namespace names (64) and node names (63).
	maxName = 32
	// firstNodeHost is the host part of node 0's underlay address minus
	// one: node i (1-based) gets .(firstNodeHost+i), the gateway .1.
	firstNodeHost = 10
	gatewayHost   = 1
	// clusterPort is where every node's gossip listens on its underlay IP.
	clusterPort = 7946
	// metricsPort is where every node's agent serves /metrics on its
	// underlay IP (fabricd's default port, on an address that a Prometheus
	// in the underlay namespace can reach).
	metricsPort = 9475
)

// DefaultSubnet is the underlay subnet unless --subnet says otherwise. It
// exists only inside the lab's own namespaces.
var DefaultSubnet = netip.MustParsePrefix("10.99.0.0/24")

// Datapaths are the values `--datapath` accepts, as fabricd does.
var Datapaths = []string{"auto", "ebpf", "kernel"}

// Sentinel errors.
var (
	// ErrInvalid: the options are wrong; nothing was created.
	ErrInvalid = errors.New("invalid lab options")
	// ErrNotFound: no lab of that name exists (no manifest).
	ErrNotFound = errors.New("no such lab")
	// ErrExists: a lab of that name exists already.
	ErrExists = errors.New("lab already exists")
	// ErrBusy: another `lab up` or `lab down` is working on the lab.
	ErrBusy = errors.New("lab is busy")
)

// Options say what lab Up builds.
type Options struct {
	Root     string       // directory holding the labs; DefaultRoot if empty
	Name     string       // lab name, prefix of every object it makes
	Nodes    int          // number of hosts, 1..MaxNodes
	Datapath string       // passed to every fabricd: auto, ebpf or kernel
	Fabricd  string       // path of the fabricd binary
	Subnet   netip.Prefix // underlay subnet
	// SecretFile, if set, is every agent's --cluster-secret-file (an
	// absolute path; the agents read it at every start). If empty, Up
	// generates a key in the lab's directory.
	SecretFile string
}

func (o Options) root() string {
	if o.Root == "" {
		return DefaultRoot
	}
	return o.Root
}

// Validate checks the options without touching anything. Every error
// wraps ErrInvalid and says what is allowed.
func (o Options) Validate() error {
	if err := ValidName(o.Name); err != nil {
		return err
	}
	if o.Nodes < 1 || o.Nodes > MaxNodes {
		return fmt.Errorf("%w: --nodes %d: a lab has 1 to %d nodes", ErrInvalid, o.Nodes, MaxNodes)
	}
	if o.SecretFile != "" && !filepath.IsAbs(o.SecretFile) {
		return fmt.Errorf("%w: --secret-file %q must be an absolute path", ErrInvalid, o.SecretFile)
	}
	if !slices.Contains(Datapaths, o.Datapath) {
		return fmt.Errorf("%w: --datapath %q: use one of %s", ErrInvalid, o.Datapath, strings.Join(Datapaths, ", "))
	}
	if o.Fabricd != "" && !filepath.IsAbs(o.Fabricd) {
		return fmt.Errorf("%w: fabricd path %q is not absolute", ErrInvalid, o.Fabricd)
	}
	return CheckSubnet(o.Subnet, o.Nodes)
}

// ValidName checks a lab name: 1 to 32 letters, digits, '-' or '_',
// starting with a letter or digit, so that every name derived from it
// (namespaces NAME-n1, node names, socket and bpffs paths) is valid.
func ValidName(name string) error {
	if name == "" || len(name) > maxName {
		return fmt.Errorf("%w: lab name %q must be 1 to %d characters", ErrInvalid, name, maxName)
	}
	for i, r := range name {
		alnum := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
		if !alnum && (i == 0 || r != '-' && r != '_') {
			return fmt.Errorf("%w: lab name %q: use letters, digits, '-' and '_', starting with a letter or digit", ErrInvalid, name)
		}
	}
	return nil
}

// ParseSubnet parses an underlay subnet given on the command line.
func ParseSubnet(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%w: --subnet %q is not a CIDR (for example %s)", ErrInvalid, s, DefaultSubnet)
	}
	return p, nil
}

// CheckSubnet checks that p is an IPv4 network address with room for the
// gateway (.1) and nodes nodes (.11 up).
func CheckSubnet(p netip.Prefix, nodes int) error {
	switch {
	case !p.IsValid() || !p.Addr().Is4():
		return fmt.Errorf("%w: --subnet %s: the underlay must be an IPv4 CIDR (for example %s)", ErrInvalid, p, DefaultSubnet)
	case p.Masked() != p:
		return fmt.Errorf("%w: --subnet %s is not a network address; did you mean %s?", ErrInvalid, p, p.Masked())
	}
	size := 1 << (32 - p.Bits())
	if room := size - 2 - firstNodeHost; room < nodes {
		return fmt.Errorf("%w: --subnet %s has room for %d node(s) at .%d and up, not %d; use a /27 or larger",
			ErrInvalid, p, max(room, 0), firstNodeHost+1, nodes)
	}
	return nil
}

// hostAddr returns the address at offset n in p.
func hostAddr(p netip.Prefix, n int) netip.Addr {
	b := p.Masked().Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
