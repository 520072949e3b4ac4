package metrics

import "time"

// Sources are where the collectors read state, once per scrape. A nil
// field leaves its metric families out: a fabricd without a cluster exports
// no fabric_cluster_*, one without the embedded DNS no fabric_dns_*. (A
// typed nil pointer in an interface is not nil and would be called.)
type Sources struct {
	Datapath DatapathSource
	Agent    AgentSource
	Cluster  ClusterSource
	DNS      DNSSource
	// API is the request instrumentation the agent's HTTP server uses; it
	// is registered with the other collectors.
	API *APIMetrics
}

// The source interfaces have one method each, named after the family, so
// that one type (the agent) can implement several of them. Every method is
// called on the scrape's goroutine while Prometheus waits: return copies of
// counters, do not wait for locks held across kernel operations.

// DatapathSource reports the packet path's counters and tables. An error
// skips the datapath families for that scrape and counts in
// fabric_datapath_read_errors_total; the other families are still served.
type DatapathSource interface {
	DatapathMetrics() (DatapathSnapshot, error)
}

// AgentSource reports the agent's desired state and its reconciles.
type AgentSource interface {
	AgentMetrics() AgentSnapshot
}

// ClusterSource reports gossip membership and traffic as this node sees it.
type ClusterSource interface {
	ClusterMetrics() ClusterSnapshot
}

// DNSSource reports the embedded DNS server's counters.
type DNSSource interface {
	DNSMetrics() DNSSnapshot
}

// DatapathSourceFunc adapts a function to DatapathSource, as
// http.HandlerFunc does for handlers.
type DatapathSourceFunc func() (DatapathSnapshot, error)

// DatapathMetrics calls f.
func (f DatapathSourceFunc) DatapathMetrics() (DatapathSnapshot, error) { return f() }

// AgentSourceFunc adapts a function to AgentSource.
type AgentSourceFunc func() AgentSnapshot

// AgentMetrics calls f.
func (f AgentSourceFunc) AgentMetrics() AgentSnapshot { return f() }

// ClusterSourceFunc adapts a function to ClusterSource.
type ClusterSourceFunc func() ClusterSnapshot

// ClusterMetrics calls f.
func (f ClusterSourceFunc) ClusterMetrics() ClusterSnapshot { return f() }

// DNSSourceFunc adapts a function to DNSSource.
type DNSSourceFunc func() DNSSnapshot

// DNSMetrics calls f.
func (f DNSSourceFunc) DNSMetrics() DNSSnapshot { return f() }

// DatapathSnapshot is the packet path's state at one moment. Counters are
// cumulative since the datapath's maps were created (pinned maps outlive an
// agent restart, so they need not start at zero; Prometheus copes with
// both).
type DatapathSnapshot struct {
	// Counters are the per-(direction, verdict, reason) packet and byte
	// counts; zero cells may be left out. Duplicate keys are summed.
	Counters []DatapathCounter
	// Conntrack is the connection-tracking table NAT relies on; nil when
	// the datapath has none it can count (fabric_conntrack_* are left out).
	Conntrack *TableUsage
	// NATAllocationFailures counts connections that could not get a
	// source port for masquerade.
	NATAllocationFailures uint64
	// MapFull counts inserts refused because a map was full, by map name.
	MapFull map[string]uint64
	// ConntrackEvictions counts connection-table entries evicted to make
	// room for new ones (0 without a table).
	ConntrackEvictions uint64
	// ConntrackQuotaDrops counts new connections dropped because their
	// source was over its quota of unanswered ones (a flood).
	ConntrackQuotaDrops uint64
	// SkippedRemotes counts remote endpoints of overlay networks the
	// datapath left out as unusable (a duplicate address, the gateway, a
	// multicast MAC, this host as node...), by reason.
	SkippedRemotes map[string]uint64
	// Repairs counts what the datapath's reconcile passes found missing or
	// changed (removed by hand) and put back, by kind of object.
	Repairs map[string]uint64
	// Programs counts the programs attached now, by hook (for example
	// "tc-endpoint", "tc-tunnel", "xdp-uplink", "cgroup-connect4").
	Programs map[string]int
}

// DatapathCounter is one counter cell. The names are the bpf package's
// String() names (bpf.Direction, bpf.Verdict, bpf.Reason), used as labels
// unchanged so that metrics, logs and `bpftool map dump` agree.
type DatapathCounter struct {
	Direction, Verdict, Reason string
	Packets, Bytes             uint64
}

// TableUsage is how full a fixed-size table is.
type TableUsage struct {
	Entries, Capacity int
}

// AgentSnapshot is the agent's state at one moment.
type AgentSnapshot struct {
	Started   time.Time // when the agent started; zero leaves fabric_agent_start_time_seconds out
	Networks  []NetworkUsage
	Sandboxes int
	Reconcile ReconcileStats
}

// NetworkUsage is one network's endpoints and addresses on this host.
type NetworkUsage struct {
	Name, Driver string
	// Unhealthy is set while the network cannot work (a macvlan parent is
	// missing); the zero value is the normal case.
	Unhealthy        bool
	Endpoints        int
	IPsUsed, IPsFree int
	// AddressConflicts counts the endpoints here that lost their overlay
	// address to another node after a partition (0 normally).
	AddressConflicts int
}

// ReconcileStats describe the runs that make the kernel match the records.
type ReconcileStats struct {
	Runs, Errors uint64
	LastDuration time.Duration // of the last run, failed or not
	LastSuccess  time.Time     // zero until one succeeded
}

// ClusterSnapshot is gossip membership and traffic as this node sees them.
type ClusterSnapshot struct {
	Members          MemberCounts
	MessagesSent     uint64
	MessagesReceived uint64
	SendErrors       uint64
	Dropped          map[string]uint64 // messages not applied, by reason
	EventsDropped    uint64            // events lost because the agent read them too slowly
	// HealthScore is memberlist's awareness score: 0 is healthy, higher
	// means this node is slow to answer probes and is probably the problem.
	HealthScore  int
	Leases       int       // address blocks this node holds
	LastFullSync time.Time // last push/pull state exchange; zero leaves the metric out
}

// MemberCounts are the cluster's members by state. The cluster package's
// "failed" is Dead here, the word operators use.
type MemberCounts struct {
	Alive, Suspect, Dead, Left int
}

// DNSSnapshot is the embedded DNS server's counters. The query counters
// count replies by outcome, as the dns package's Stats do.
type DNSSnapshot struct {
	Resolvers int // sandboxes with a resolver
	Records   int
	Upstreams int
	Inflight  int // forwarded queries waiting for an upstream now

	Local, NXDomain, Forwarded, ForwardFailed, Refused, Malformed uint64
	InflightRejected                                              uint64 // part of ForwardFailed

	// Upstream latency of successful forwards, as a cumulative histogram
	// (the DNS server's Stats keep it in this type, so the agent hands
	// the buckets over as they are). A bucket with Le 0 is +Inf and is
	// ignored: UpstreamCount is the +Inf bucket.
	UpstreamCount   uint64
	UpstreamSum     time.Duration
	UpstreamBuckets []LatencyBucket
}

// LatencyBucket counts observations of at most Le. It is the one
// histogram bucket type of fabric's counters: the DNS server keeps its
// upstream latency in it (the dependency goes that way only).
type LatencyBucket struct {
	Le    time.Duration
	Count uint64
}
