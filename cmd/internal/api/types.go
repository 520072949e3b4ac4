// Package api is the contract between fabricd and its clients: the JSON
// bodies of the agent's HTTP API on its unix socket, the error codes, and a
// small client. It imports nothing else of fabric.
package api

import "time"

// Version is the API path prefix.
const Version = "v1"

// Error is the body of every rejected request (4xx) and of server errors.
// The message names request fields by their JSON names (ip, ip_range,
// auto_remove), never by a client's flags; Fields lists the ones it names,
// so a client can put them in its own terms.
type Error struct {
	Message string   `json:"error"`
	Code    string   `json:"code"`
	Fields  []string `json:"fields,omitempty"`
}

func (e *Error) Error() string { return e.Message }

// Error codes. The HTTP status follows from the code (see StatusOf).
const (
	CodeInvalid   = "invalid"   // bad input; 400
	CodeNotFound  = "not_found" // 404
	CodeConflict  = "conflict"  // name or address in use, network busy; 409
	CodeExhausted = "exhausted" // no address left in the pool; 409
	CodeInternal  = "internal"  // 500
)

// StatusOf maps an error code to its HTTP status.
func StatusOf(code string) int {
	switch code {
	case CodeInvalid:
		return 400
	case CodeNotFound:
		return 404
	case CodeConflict, CodeExhausted:
		return 409
	default:
		return 500
	}
}

// Network drivers.
const (
	DriverBridge  = "bridge"
	DriverMacvlan = "macvlan"
	DriverIPvlan  = "ipvlan"
	DriverOverlay = "overlay"
)

// Network health.
const (
	HealthOK        = "ok"
	HealthUnhealthy = "unhealthy"
)

// Sandbox modes (Docker's --network values that need no network object).
const (
	ModeNetNS     = "netns"     // own namespace at /var/run/netns/NAME, on networks
	ModeNone      = "none"      // own namespace with only lo
	ModeHost      = "host"      // the host's namespace
	ModeContainer = "container" // joins another sandbox's namespace
	ModeExternal  = "external"  // a namespace fabric did not create (connect by path)
)

// NetworkCreate is the body of POST /v1/networks.
type NetworkCreate struct {
	Name     string            `json:"name"`
	Driver   string            `json:"driver,omitempty"`  // default bridge
	Subnet   string            `json:"subnet,omitempty"`  // CIDR; default: next free pool
	Gateway  string            `json:"gateway,omitempty"` // default: first address
	IPRange  string            `json:"ip_range,omitempty"`
	Internal bool              `json:"internal,omitempty"`
	Options  map[string]string `json:"options,omitempty"` // per driver: mtu, bridge_name, parent, macvlan_mode, ipvlan_mode, host_shim, exclude
}

// Network is a network as the API reports it.
type Network struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	Driver    string            `json:"driver"`
	Subnet    string            `json:"subnet"`
	Gateway   string            `json:"gateway"`
	IPRange   string            `json:"ip_range,omitempty"`
	Internal  bool              `json:"internal"`
	Options   map[string]string `json:"options,omitempty"`
	Bridge    string            `json:"bridge,omitempty"`
	MTU       int               `json:"mtu"`
	Parent    string            `json:"parent,omitempty"`    // macvlan/ipvlan
	Mode      string            `json:"mode,omitempty"`      // macvlan/ipvlan mode
	HostShim  string            `json:"host_shim,omitempty"` // the host's address on a macvlan network
	Health    string            `json:"health"`              // ok, or unhealthy: why
	Created   time.Time         `json:"created"`
	Endpoints int               `json:"endpoints"`
	IPsUsed   int               `json:"ips_used"`
	IPsFree   int               `json:"ips_free"`
	Scope     string            `json:"scope"`         // local, or cluster (overlay)
	VNI       uint32            `json:"vni,omitempty"` // overlay
	// Remotes are the endpoints on other nodes this host forwards to
	// (overlay), as programmed in the datapath.
	Remotes []Remote `json:"remotes,omitempty"`
}

// Remote is an endpoint of an overlay network on another node.
type Remote struct {
	IP   string `json:"ip"`
	MAC  string `json:"mac"`
	Node string `json:"node"` // the node's underlay address
}

// Port is a published port.
type Port struct {
	Proto    string `json:"proto"`             // tcp or udp
	HostIP   string `json:"host_ip,omitempty"` // empty: every host address
	HostPort uint16 `json:"host_port"`
	Port     uint16 `json:"port"`
}

// SandboxCreate is the body of POST /v1/sandboxes (what `fabricctl run` sends).
type SandboxCreate struct {
	Name    string   `json:"name,omitempty"`    // default: generated
	Network string   `json:"network,omitempty"` // NET, host, none or container:NAME; default bridge
	IP      string   `json:"ip,omitempty"`
	Ports   []string `json:"ports,omitempty"` // [HOSTIP:]HOSTPORT:PORT[/tcp|/udp]
	Aliases []string `json:"aliases,omitempty"`
	// Command, when set, is started by the agent inside the sandbox and the
	// request returns once it runs (run -d). When empty the caller runs its
	// own command (foreground run) and reports it with SandboxProcess.
	Command    []string `json:"command,omitempty"`
	AutoRemove bool     `json:"auto_remove,omitempty"` // remove the sandbox when the command exits

	// NetNS, when set, makes the sandbox of a namespace that already
	// exists (a path such as /var/run/netns/cni-… or /proc/PID/ns/net,
	// as a CNI runtime hands it over) instead of creating one: the agent
	// holds it by identity (mode external), as `network connect NET PATH`
	// does, and needs Network. A namespace without a default route gets
	// one via the network's gateway; one that has its own keeps it.
	NetNS string `json:"netns,omitempty"`
	// Owner says who manages the sandbox: "" fabric itself, OwnerCNI,
	// OwnerDocker. Only an owner's own calls are expected to remove it.
	Owner string `json:"owner,omitempty"`
	// ContainerID is the owner's name for the container (CNI_CONTAINERID).
	ContainerID string `json:"container_id,omitempty"`
	// IfName is the interface's name in the namespace (CNI_IFNAME);
	// default the lowest free ethN.
	IfName string `json:"ifname,omitempty"`
	// MAC asks for the interface's MAC (default: derived from the address).
	MAC string `json:"mac,omitempty"`
}

// Sandbox owners.
const (
	OwnerFabric = ""
	OwnerCNI    = "cni"
	OwnerDocker = "docker"
)

// SandboxProcess is the body of PUT /v1/sandboxes/NAME/process: a client
// that runs the sandbox's command itself tells the agent its PID.
type SandboxProcess struct {
	PID int `json:"pid"`
}

// Sandbox states.
const (
	StateCreated = "created" // namespace and endpoints ready, no process
	StateRunning = "running"
	StateExited  = "exited"
)

// Sandbox is a sandbox as the API reports it.
type Sandbox struct {
	Name       string     `json:"name"`
	Mode       string     `json:"mode"`
	NetNS      string     `json:"netns,omitempty"`     // namespace path ("" in host mode)
	Origin     string     `json:"origin,omitempty"`    // external: the path it was connected by (NetNS is the agent's reference to it)
	Container  string     `json:"container,omitempty"` // target of container: mode
	Command    []string   `json:"command,omitempty"`
	PID        int        `json:"pid,omitempty"`
	State      string     `json:"state"`
	ExitCode   *int       `json:"exit_code,omitempty"`
	AutoRemove bool       `json:"auto_remove,omitempty"`
	Ports      []Port     `json:"ports,omitempty"`
	Aliases    []string   `json:"aliases,omitempty"`
	Endpoints  []Endpoint `json:"endpoints,omitempty"`
	LogPath    string     `json:"log_path,omitempty"`
	Created    time.Time  `json:"created"`
	// Owner is who manages the sandbox ("" fabric, "cni", "docker") and
	// ContainerID the owner's name for it.
	Owner       string `json:"owner,omitempty"`
	ContainerID string `json:"container_id,omitempty"`
	// Nameservers are the resolvers that answer inside the sandbox (the
	// embedded DNS server, when it runs there).
	Nameservers []string `json:"nameservers,omitempty"`
}

// Connect is the body of POST /v1/networks/NAME/connect.
type Connect struct {
	// Sandbox is a sandbox name, or a path to a network namespace
	// (/proc/PID/ns/net, /var/run/netns/X) to wire in a namespace fabric
	// did not create.
	Sandbox string   `json:"sandbox"`
	IP      string   `json:"ip,omitempty"`
	Aliases []string `json:"aliases,omitempty"`
	// Link, with a namespace path as Sandbox, names the host side of a
	// veth pair whose other end the container runtime has already moved
	// into that namespace, named and addressed with IP (Docker does this
	// with the interface a network driver returns from Join): fabric
	// adopts the pair as the endpoint and leaves the interface's name and
	// the namespace's routes to the runtime.
	Link string `json:"link,omitempty"`
}

// Disconnect is the body of POST /v1/networks/NAME/disconnect.
type Disconnect struct {
	Sandbox string `json:"sandbox"`
}

// Endpoint is an endpoint as the API reports it.
type Endpoint struct {
	ID         string   `json:"id"`
	Network    string   `json:"network"`
	Sandbox    string   `json:"sandbox"`
	IfName     string   `json:"ifname"`
	HostIfName string   `json:"host_ifname"`
	IP         string   `json:"ip"` // CIDR
	Gateway    string   `json:"gateway,omitempty"`
	MAC        string   `json:"mac"`
	Aliases    []string `json:"aliases,omitempty"`
	// DefaultRoute, on the endpoint that would carry the default route,
	// says why it does not: a namespace fabric did not create kept its
	// own default route.
	DefaultRoute string `json:"default_route,omitempty"`
}

// Status is the body of GET /v1/status.
type Status struct {
	Version   string         `json:"version"`
	Node      string         `json:"node"`
	Uptime    string         `json:"uptime"`
	Started   string         `json:"started"`
	Datapath  string         `json:"datapath"`
	Details   []string       `json:"datapath_details,omitempty"`
	Networks  int            `json:"networks"`
	Sandboxes int            `json:"sandboxes"`
	Endpoints int            `json:"endpoints"`
	DNS       *DNSStatus     `json:"dns,omitempty"`
	Cluster   *ClusterStatus `json:"cluster,omitempty"`
	Warnings  []string       `json:"warnings,omitempty"`
}

// KeyOp is the body of POST /v1/cluster/keys: one step of a gossip key
// rotation, applied on every member.
type KeyOp struct {
	Op  string `json:"op"`  // install, use or remove
	Key string `json:"key"` // base64, 16, 24 or 32 bytes
}

// Key is a gossip key as listed by GET /v1/cluster/keys: never the key
// itself, a fingerprint (first 8 bytes of its SHA-256, hex).
type Key struct {
	Fingerprint string `json:"fingerprint"`
	Primary     bool   `json:"primary"`
}

// ClusterStatus describes this node's view of the cluster.
type ClusterStatus struct {
	Node             string   `json:"node"`
	Gossip           string   `json:"gossip"` // address gossip listens on
	Tunnel           string   `json:"tunnel"` // underlay address:port of overlay traffic
	Alive            int      `json:"alive"`
	Suspect          int      `json:"suspect"`
	Encrypted        bool     `json:"encrypted"`
	LastFullSync     string   `json:"last_full_sync,omitempty"`
	Members          []Member `json:"members"`
	Networks         int      `json:"overlay_networks"`
	MessagesSent     uint64   `json:"messages_sent"`
	MessagesReceived uint64   `json:"messages_received"`
	MessagesDropped  uint64   `json:"messages_dropped"`
	SendErrors       uint64   `json:"send_errors"`
	Problems         []string `json:"problems,omitempty"`
}

// Member is one cluster node as this node sees it.
type Member struct {
	Name      string `json:"name"`
	Addr      string `json:"addr"`   // underlay (tunnel) address
	Gossip    string `json:"gossip"` // gossip address
	State     string `json:"state"`  // alive, failed or left
	Since     string `json:"since"`
	Datapath  string `json:"datapath,omitempty"`
	Version   string `json:"version,omitempty"`
	Endpoints int    `json:"endpoints"`
	// Probe is the last health probe from this node over the underlay:
	// the round trip ("412µs") or why it failed; empty for this node.
	Probe string `json:"probe,omitempty"`
	// Reachable is false when the last probe failed.
	Reachable bool `json:"reachable"`
}

// DNSStatus describes the embedded DNS server (127.0.0.11 in every sandbox).
type DNSStatus struct {
	Resolvers   int      `json:"resolvers"` // sandboxes with a running resolver
	Records     int      `json:"records"`
	Upstreams   []string `json:"upstreams,omitempty"`
	Local       uint64   `json:"answered_local"`
	NXDomain    uint64   `json:"nxdomain"`
	Forwarded   uint64   `json:"forwarded"`
	Failed      uint64   `json:"forward_failed"`
	Malformed   uint64   `json:"malformed_or_refused"`
	UpstreamAvg string   `json:"upstream_avg,omitempty"`
	// IgnoredNames counts the distinct gossiped names that were not one
	// DNS label and were left out of the table.
	IgnoredNames uint64   `json:"ignored_names,omitempty"`
	Errors       []string `json:"errors,omitempty"` // sandboxes whose resolver could not start
}
