package agent

import (
	"net"
	"net/netip"
	"sort"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/agent/agentstate"
	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns"
)

// Store buckets: named in agentstate, which readers of a stopped agent's
// state share.
const (
	bucketNetworks  = agentstate.BucketNetworks
	bucketSandboxes = agentstate.BucketSandboxes
	bucketEndpoints = agentstate.BucketEndpoints
)

// Phase of a stored record. A record is written before the kernel is
// touched; an agent that restarts finds a "creating" record rolled back
// (its client never saw success) and a "removing" one finished.
type phase string

const (
	phaseCreating phase = "creating"
	phaseReady    phase = "ready"
	phaseRemoving phase = "removing"
)

type networkRec struct {
	ID       string            `json:"id"`
	Name     string            `json:"name"`
	Driver   string            `json:"driver"`
	Subnet   netip.Prefix      `json:"subnet"`
	Gateway  netip.Addr        `json:"gateway"`
	IPRange  netip.Prefix      `json:"ip_range,omitzero"`
	Internal bool              `json:"internal,omitempty"`
	Options  map[string]string `json:"options,omitempty"`
	Bridge   string            `json:"bridge,omitempty"`
	MTU      int               `json:"mtu"`
	Parent   string            `json:"parent,omitempty"` // macvlan/ipvlan
	Mode     string            `json:"mode,omitempty"`   // macvlan/ipvlan mode
	Shim     bool              `json:"shim,omitempty"`   // host_shim=true
	HostShim netip.Addr        `json:"host_shim,omitzero"`
	Exclude  []netip.Addr      `json:"exclude,omitempty"`
	VNI      uint32            `json:"vni,omitempty"`        // overlay
	Cluster  string            `json:"cluster_id,omitempty"` // overlay: the cluster's network ID
	Default  bool              `json:"default,omitempty"`
	Created  time.Time         `json:"created"`
	Phase    phase             `json:"phase"`
}

type sandboxRec struct {
	Name   string   `json:"name"`
	Mode   string   `json:"mode"`
	NetNS  string   `json:"netns,omitempty"`
	NSID   netns.ID `json:"nsid,omitzero"`    // identity of an external namespace
	Origin string   `json:"origin,omitempty"` // external: the path it was connected by (NetNS is the agent's reference)
	// KeptRoute is the default route an external namespace had when it
	// was connected ("default via 198.51.100.1 dev ens3"): fabric leaves
	// it alone and adds only subnet routes.
	KeptRoute  string     `json:"kept_default_route,omitempty"`
	Container  string     `json:"container,omitempty"`
	Command    []string   `json:"command,omitempty"`
	PID        int        `json:"pid,omitempty"`
	PIDStart   uint64     `json:"pid_start,omitempty"`  // /proc/PID/stat starttime, guards against PID reuse
	ClientPID  bool       `json:"client_pid,omitempty"` // PID reported by a client (SetProcess), not started by the agent
	ExitCode   *int       `json:"exit_code,omitempty"`
	Exited     bool       `json:"exited,omitempty"`
	AutoRemove bool       `json:"auto_remove,omitempty"`
	Ports      []api.Port `json:"ports,omitempty"`
	Aliases    []string   `json:"aliases,omitempty"`
	LogPath    string     `json:"log_path,omitempty"`
	Created    time.Time  `json:"created"`
	Phase      phase      `json:"phase"`
	// Owner manages the sandbox ("" fabric, "cni", "docker") and
	// ContainerID is its name for the container.
	Owner       string `json:"owner,omitempty"`
	ContainerID string `json:"container_id,omitempty"`

	foreignLinks []string // external, while connecting: interfaces it had
}

type endpointRec struct {
	ID         string       `json:"id"`
	NetworkID  string       `json:"network_id"`
	Sandbox    string       `json:"sandbox"`
	IfName     string       `json:"ifname"`
	HostIfName string       `json:"host_ifname"`
	Addr       netip.Prefix `json:"addr"`
	MAC        string       `json:"mac"`
	Aliases    []string     `json:"aliases,omitempty"`
	Created    time.Time    `json:"created"`
	Phase      phase        `json:"phase"`
	// Adopted: a pair the runtime put in place (api.Connect.Link); its
	// sandbox's routes are the runtime's.
	Adopted bool `json:"adopted,omitempty"`
}

func (n *networkRec) datapath() datapath.Network {
	return datapath.Network{
		ID: n.ID, Name: n.Name, Driver: n.Driver, Subnet: n.Subnet, Gateway: n.Gateway,
		Bridge: n.Bridge, MTU: n.MTU, Internal: n.Internal,
		Parent: n.Parent, Mode: n.Mode, HostShim: n.HostShim, VNI: n.VNI,
	}
}

func (n *networkRec) api(endpoints, used, free int, health string) api.Network {
	out := api.Network{
		ID: n.ID, Name: n.Name, Driver: n.Driver, Subnet: n.Subnet.String(), Gateway: n.Gateway.String(),
		Internal: n.Internal, Options: n.Options, Bridge: n.Bridge, MTU: n.MTU, Created: n.Created,
		Endpoints: endpoints, IPsUsed: used, IPsFree: free, Parent: n.Parent, Mode: n.Mode, Health: health,
		VNI: n.VNI, Scope: "local",
	}
	if n.Driver == api.DriverOverlay {
		out.Scope = "cluster"
	}
	if n.HostShim.IsValid() {
		out.HostShim = n.HostShim.String()
	}
	if n.IPRange.IsValid() {
		out.IPRange = n.IPRange.String()
	}
	return out
}

func (e *endpointRec) api(netName string, gw netip.Addr) api.Endpoint {
	out := api.Endpoint{
		ID: e.ID, Network: netName, Sandbox: e.Sandbox, IfName: e.IfName, HostIfName: e.HostIfName,
		IP: e.Addr.String(), MAC: e.MAC, Aliases: e.Aliases,
	}
	if gw.IsValid() {
		out.Gateway = gw.String()
	}
	return out
}

// macFor derives a locally administered MAC from the IPv4 address, as
// Docker does, so a neighbour cache entry stays right across re-creation.
func macFor(a netip.Addr) net.HardwareAddr { return api.EndpointMAC(a) }

// sortedEndpoints orders a sandbox's endpoints by creation (eth0 first).
func sortedEndpoints(eps []*endpointRec) []*endpointRec {
	sort.Slice(eps, func(i, j int) bool {
		if !eps[i].Created.Equal(eps[j].Created) {
			return eps[i].Created.Before(eps[j].Created)
		}
		return eps[i].IfName < eps[j].IfName
	})
	return eps
}
