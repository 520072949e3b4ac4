package lab

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns"
)

// Node states in a status report.
const (
	NodeRunning      = "running"      // the agent runs and answers
	NodeUnresponsive = "unresponsive" // the agent runs but does not answer
	NodeDead         = "dead"         // no agent process
)

// statusTimeout bounds each agent's answer to a status query.
const statusTimeout = 2 * time.Second

// Status is a lab as `lab status` reports it.
type Status struct {
	Name     string       `json:"name"`
	Dir      string       `json:"dir"`
	State    string       `json:"state"`
	Created  time.Time    `json:"created"`
	Datapath string       `json:"datapath"` // what the agents were asked for
	Subnet   netip.Prefix `json:"subnet"`
	Gateway  netip.Addr   `json:"gateway"`
	Underlay Underlay     `json:"underlay"`
	Nodes    []NodeStatus `json:"nodes"`
}

// NodeStatus is one node's agent as seen from outside and, when it
// answers, from its own status.
type NodeStatus struct {
	ID     string     `json:"id"`
	Name   string     `json:"name"`
	NetNS  string     `json:"netns"`
	IP     netip.Addr `json:"ip"`
	Socket string     `json:"socket"`
	Log    string     `json:"log"`
	// Metrics is where the agent serves /metrics (from the manifest; zero
	// for older labs).
	Metrics netip.AddrPort `json:"metrics,omitzero"`
	// NetNSOK is false when the node's namespace has gone.
	NetNSOK bool `json:"netns_ok"`
	// PID is the agent's; the recorded one when no agent runs.
	PID   int    `json:"pid,omitempty"`
	Alive bool   `json:"alive"`
	State string `json:"state"`
	// From the agent's GET /v1/status, when it answers.
	Datapath string   `json:"datapath,omitempty"`
	Version  string   `json:"version,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
	// Error says why the agent did not answer.
	Error string `json:"error,omitempty"`
}

// Healthy reports whether every node's agent runs and answers.
func (s Status) Healthy() bool {
	for _, n := range s.Nodes {
		if n.State != NodeRunning {
			return false
		}
	}
	return true
}

// GetStatus checks every node of m: its namespace, its agent process and
// the agent's answer to a status query, all nodes at once.
func GetStatus(ctx context.Context, m *Manifest) Status {
	s := Status{
		Name: m.Name, Dir: m.Dir, State: m.State, Created: m.Created, Datapath: m.Datapath,
		Subnet: m.Subnet, Gateway: m.Gateway, Underlay: m.Underlay,
		Nodes: make([]NodeStatus, len(m.Nodes)),
	}
	var wg sync.WaitGroup
	for i, n := range m.Nodes {
		wg.Go(func() { s.Nodes[i] = nodeStatus(ctx, m.Fabricd, n) })
	}
	wg.Wait()
	return s
}

func nodeStatus(ctx context.Context, fabricd string, n Node) NodeStatus {
	ns := NodeStatus{
		ID: n.ID, Name: n.Name, NetNS: n.NetNS, IP: n.IP, Socket: n.Socket, Log: n.Log, Metrics: n.Metrics,
		NetNSOK: netns.IsNamespace(n.NetNSPath()), PID: n.PID, State: NodeDead,
	}
	switch {
	case agentAlive(fabricd, n):
		ns.PID, ns.Alive = n.PID, true
	default:
		// Restarted by hand (see Node.Argv): still the node's agent.
		if pids := agentPIDs(fabricd, n); len(pids) > 0 {
			ns.PID, ns.Alive = pids[0], true
		}
	}
	if !ns.Alive {
		ns.Error = "no fabricd process serving " + n.Socket
		return ns
	}
	sctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	st, err := api.NewClient(n.Socket).Status(sctx)
	if err != nil {
		ns.State, ns.Error = NodeUnresponsive, err.Error()
		return ns
	}
	ns.State = NodeRunning
	ns.Datapath, ns.Version, ns.Warnings = st.Datapath, st.Version, st.Warnings
	return ns
}
