// Package datapath defines what the agent asks of a host's forwarding plane:
// "make the kernel look like this". Implementations (kernel: bridge, veth and
// nftables; later ebpf: tc/XDP programs) turn the desired networks and
// endpoints into kernel objects with idempotent ensure operations.
//
// The package knows nothing of the agent's store, of the API or of gossip: it
// receives plain descriptions of networks and endpoints and nothing else.
package datapath

import (
	"context"
	"errors"
	"net"
	"net/netip"

	"github.com/fabricnet/fabric/datapath/netns"
)

// OwnerPrefix marks kernel objects that fabric created (it is written into
// the link alias), so that a reconcile can find and prune what is no longer
// wanted without touching anything else on the host.
const OwnerPrefix = "fabric:"

// Sentinel errors.
var (
	// ErrInvalid is returned for a description a datapath cannot program.
	ErrInvalid = errors.New("invalid datapath request")
	// ErrParentMissing means a macvlan/ipvlan network's parent interface
	// is absent or down: its endpoints cannot work until it returns.
	ErrParentMissing = errors.New("parent interface missing or down")
)

// Network drivers.
const (
	DriverBridge  = "bridge"
	DriverMacvlan = "macvlan"
	DriverIPvlan  = "ipvlan"
	// DriverOverlay is a cluster-scoped network: local endpoints are
	// wired like a bridge network's, remote ones (SetRemotes) are reached
	// through a VXLAN tunnel to their node.
	DriverOverlay = "overlay"
)

// VXLANOverhead is what VXLAN over IPv4 adds to every frame (outer IPv4 20,
// UDP 8, VXLAN 8, inner Ethernet 14): an overlay endpoint's MTU is the
// underlay's minus this.
const VXLANOverhead = 50

// DefaultTunnelPort is the IANA VXLAN UDP port.
const DefaultTunnelPort = 4789

// Tunnel is how a host sends and receives overlay traffic.
type Tunnel struct {
	// Local is the host's underlay address: outer source of what it sends
	// and the address its VXLAN socket is reached at.
	Local netip.Addr
	// Port is the VXLAN UDP port, the same on every node.
	Port uint16
	// Device is the underlay interface holding Local (found if empty).
	Device string
}

// HostPort is one of fabric's own ports on the host (gossip, the tunnel,
// metrics): no sandbox may reach it, whatever host address it aims at.
type HostPort struct {
	Proto string // "tcp" or "udp"
	Port  uint16
}

// DefaultConntrackMax is the size of the eBPF datapath's connection table
// (entries, two per connection) unless configured.
const DefaultConntrackMax = 262144

// DefaultConntrackPending is how many unanswered connections (a TCP
// handshake not completed, a UDP flow not replied to) one source address
// may start per 5 s before its new ones are dropped: a flood from one
// sandbox or one client cannot push everyone else out of the table.
const DefaultConntrackPending = 2048

// Network is one network as the datapath sees it.
type Network struct {
	ID       string // stable, unique; used to name and mark kernel objects
	Name     string
	Driver   string // DriverBridge, DriverMacvlan, DriverIPvlan or DriverOverlay
	Subnet   netip.Prefix
	Gateway  netip.Addr
	Bridge   string // bridge device name on the host
	MTU      int
	Internal bool // no traffic in or out of the network except between its endpoints

	// VNI is an overlay network's VXLAN network identifier (1..16777215),
	// the same on every node.
	VNI uint32

	// Parent is the host interface a macvlan or ipvlan network's endpoints
	// hang off. A name of the form IFACE.VID (eth1.10) is an 802.1q
	// sub-interface; the datapath creates it if missing (marked as its
	// own with the owner alias) and removes it with the network only then.
	Parent string
	// Mode is the macvlan mode (bridge, private, vepa, passthru) or the
	// ipvlan mode (l2, l3, l3s); empty means bridge / l2.
	Mode string
	// HostShim, when valid, asks for a macvlan (bridge mode) interface on
	// the host with this address (/32), through which the host reaches the
	// network's endpoints (kernel macvlan otherwise keeps the host out).
	HostShim netip.Addr
}

// Endpoint is one sandbox's attachment to a network.
type Endpoint struct {
	ID        string
	NetworkID string
	NetNSPath string // the sandbox's network namespace (a bind mount or /proc/PID/ns/net)
	// NetNSID, if set, is the identity the namespace at NetNSPath must
	// have: a namespace fabric did not create is checked on every use, so
	// a path that names another namespace by now (a reused PID) is never
	// touched.
	NetNSID    netns.ID
	IfName     string           // interface name inside the sandbox, e.g. eth0
	HostIfName string           // host-side veth name (bridge driver only)
	Addr       netip.Prefix     // address with the network's prefix length
	MAC        net.HardwareAddr // sandbox-side MAC (ipvlan children use the parent's)
	// DefaultRoute says whether the sandbox's default route goes through this
	// endpoint's gateway. Exactly one endpoint of a sandbox with egress has it.
	DefaultRoute bool
	// Adopted says the veth pair was made before the namespace existed
	// and its sandbox side put in place by the container runtime (Docker
	// moves it into the namespace, names it IfName, gives it Addr and owns
	// the namespace's routes): the datapath takes the pair over as it
	// finds it and never adds or removes a route in the sandbox.
	Adopted bool
	Ports   []PortMapping
	// NamespaceGoes, on a DeleteEndpoint of a veth endpoint, says the
	// caller deletes the sandbox's namespace right after: the datapath
	// forgets the endpoint and cuts its pair off (host side down), and the
	// kernel deletes the pair with the namespace, in a batch, instead of
	// one costly deletion each. Only for namespaces fabric made and
	// deletes itself; ignored elsewhere.
	NamespaceGoes bool
}

// PortMapping publishes a sandbox port on the host.
type PortMapping struct {
	Proto    string     // "tcp" or "udp"
	HostIP   netip.Addr // invalid (zero) means every host address
	HostPort uint16
	Port     uint16 // port inside the sandbox
}

// Remote is an endpoint of an overlay network that lives on another node.
type Remote struct {
	Addr netip.Addr       // the endpoint's address
	MAC  net.HardwareAddr // its sandbox-side MAC
	Node netip.Addr       // underlay (tunnel) address of its node
}

// State is the complete desired state of one host, used by Sync.
type State struct {
	Networks  []Network
	Endpoints []Endpoint
	// Remotes are the remote endpoints of each overlay network, by
	// network ID; an overlay network missing here has none.
	Remotes map[string][]Remote
}

// Status describes a datapath for `fabricctl status`.
type Status struct {
	Name     string   `json:"name"`
	Details  []string `json:"details,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
}

// Datapath programs one host. Every method is an idempotent ensure: calling
// it again with the same arguments changes nothing, and calling it after a
// crash half-way through completes the work.
type Datapath interface {
	// EnsureNetwork creates or repairs a network's host-side objects.
	EnsureNetwork(ctx context.Context, n Network) error
	// DeleteNetwork removes them; deleting a missing network is not an error.
	DeleteNetwork(ctx context.Context, n Network) error
	// EnsureEndpoint creates or repairs an endpoint (its network must exist).
	EnsureEndpoint(ctx context.Context, n Network, ep Endpoint) error
	// DeleteEndpoint removes an endpoint; a missing one is not an error.
	DeleteEndpoint(ctx context.Context, n Network, ep Endpoint) error
	// SetRemotes makes remotes the complete set of remote endpoints of
	// overlay network n (which must have been ensured): entries not in it
	// are removed. Addresses of local endpoints must not be in it.
	SetRemotes(ctx context.Context, n Network, remotes []Remote) error
	// Sync makes the host match s exactly: every fabric-owned object not
	// in s is removed and everything in s is ensured. It runs at start and
	// then every RepairInterval: it compares before it writes, and counts
	// (Metrics.Repairs) and logs what it had to put back.
	Sync(ctx context.Context, s State) error
	Status(ctx context.Context) Status
	Close() error
}

// Counter is one datapath packet counter: packets and bytes a program saw
// in one direction, with one verdict, for one reason.
type Counter struct {
	Direction, Verdict, Reason string
	Packets, Bytes             uint64
}

// Metrics is what a datapath reports for monitoring.
type Metrics struct {
	Counters []Counter
	// Conntrack is the NAT connection table's use; nil if there is none.
	ConntrackEntries, ConntrackCapacity int
	HasConntrack                        bool
	// ConntrackEvictions counts connection-table entries evicted to make
	// room (a full table), since the table was made.
	ConntrackEvictions uint64
	// SkippedRemotes counts remote endpoints SetRemotes left out because
	// they were unusable (a duplicate address, the gateway, a multicast
	// MAC, this host as their node...), by reason, since start.
	SkippedRemotes map[string]uint64
	// Programs counts attached programs by hook (e.g. "tcx-ingress").
	Programs map[string]int
	// Repairs counts the objects reconcile passes found missing or changed
	// and put back, by kind (Repair*), since start.
	Repairs map[string]uint64
}

// MetricsReader is implemented by datapaths that have counters (eBPF). It is
// read at scrape time.
type MetricsReader interface {
	Metrics() (Metrics, error)
}
