package agent

import (
	"errors"

	"github.com/fabricnet/fabric/cluster"
	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/metrics"
)

// AgentMetrics is the agent's state for the metrics collector.
//
// It reads the core's maps under Agent.view, not Agent.mu: a scrape does
// not wait for a change in progress.
func (a *Agent) AgentMetrics() metrics.AgentSnapshot {
	a.view.RLock()
	defer a.view.RUnlock()
	rec := a.health.reconciles()
	s := metrics.AgentSnapshot{
		Started:   a.started,
		Sandboxes: len(a.sandboxes),
		Reconcile: metrics.ReconcileStats{
			Runs: rec.runs, Errors: rec.errors, LastDuration: rec.last, LastSuccess: rec.lastSuccess,
		},
	}
	conflicts := a.glue.conflictsByNetwork()
	for _, n := range a.networks {
		api := a.networkAPI(n)
		_, bad := a.health.unhealthyWhy(n.ID)
		s.Networks = append(s.Networks, metrics.NetworkUsage{
			Name: n.Name, Driver: n.Driver, Unhealthy: bad,
			Endpoints: api.Endpoints, IPsUsed: api.IPsUsed, IPsFree: api.IPsFree,
			AddressConflicts: conflicts[n.Name],
		})
	}
	// Cluster networks that could not be set up here (a subnet that is
	// special-use or overlaps a host route) count as unhealthy overlays.
	names, _ := a.glue.unhealthyNetworks()
	for _, name := range names {
		s.Networks = append(s.Networks, metrics.NetworkUsage{Name: name, Driver: api.DriverOverlay, Unhealthy: true})
	}
	return s
}

// DNSMetrics is the embedded DNS server's counters.
func (a *Agent) DNSMetrics() metrics.DNSSnapshot {
	if a.dns == nil {
		return metrics.DNSSnapshot{}
	}
	st := a.dns.Stats()
	s := metrics.DNSSnapshot{
		Resolvers: st.Attached, Records: st.Records, Upstreams: len(st.Upstreams), Inflight: st.Inflight,
		Local: st.Local, NXDomain: st.NXDomain, Forwarded: st.Forwarded, ForwardFailed: st.ForwardFailed,
		Refused: st.Refused, Malformed: st.Malformed, InflightRejected: st.InflightRejected,
		UpstreamCount: st.UpstreamCount, UpstreamSum: st.UpstreamSum, UpstreamBuckets: st.UpstreamBuckets,
	}
	return s
}

// errNoCounters is returned by DatapathMetrics for a datapath without
// counters; MetricsSources leaves the family out instead.
var errNoCounters = errors.New("datapath has no counters")

// DatapathMetrics reads the datapath's counters at scrape time.
func (a *Agent) DatapathMetrics() (metrics.DatapathSnapshot, error) {
	r, ok := a.dp.(datapath.MetricsReader)
	if !ok {
		return metrics.DatapathSnapshot{}, errNoCounters
	}
	m, err := r.Metrics()
	if err != nil {
		return metrics.DatapathSnapshot{}, err
	}
	s := metrics.DatapathSnapshot{Programs: m.Programs}
	if m.HasConntrack {
		// The conntrack map can fill up: its series exists from the start
		// (0), so that increase(...) > 0 sees the first refused insert.
		s.MapFull = map[string]uint64{"ct": 0}
	}
	for _, c := range m.Counters {
		s.Counters = append(s.Counters, metrics.DatapathCounter{
			Direction: c.Direction, Verdict: c.Verdict, Reason: c.Reason, Packets: c.Packets, Bytes: c.Bytes,
		})
		if c.Reason == "nat-exhausted" {
			s.NATAllocationFailures += c.Packets
		}
		if c.Reason == "ct-quota" {
			s.ConntrackQuotaDrops += c.Packets
		}
		if c.Reason == "ct-full" {
			if s.MapFull == nil {
				s.MapFull = map[string]uint64{}
			}
			s.MapFull["ct"] += c.Packets
		}
	}
	s.SkippedRemotes = m.SkippedRemotes
	s.Repairs = m.Repairs
	s.ConntrackEvictions = m.ConntrackEvictions
	if m.HasConntrack {
		s.Conntrack = &metrics.TableUsage{Entries: m.ConntrackEntries, Capacity: m.ConntrackCapacity}
	}
	return s, nil
}

// MetricsSources are the agent's metric sources, for metrics.NewRegistry.
// The datapath family is there only if the datapath has counters.
func (a *Agent) MetricsSources(apiMetrics *metrics.APIMetrics) metrics.Sources {
	s := metrics.Sources{Agent: a, API: apiMetrics}
	if _, ok := a.dp.(datapath.MetricsReader); ok {
		s.Datapath = a
	}
	if a.dns != nil {
		s.DNS = a
	}
	if a.cl != nil {
		s.Cluster = a
	}
	return s
}

// ClusterMetrics reports membership and gossip as this node sees them.
func (a *Agent) ClusterMetrics() metrics.ClusterSnapshot {
	st := a.cl.Stats()
	out := metrics.ClusterSnapshot{
		MessagesSent: st.MessagesSent, MessagesReceived: st.MessagesReceived, SendErrors: st.SendErrors,
		Dropped: st.Dropped, EventsDropped: st.EventsDropped, HealthScore: st.HealthScore,
		Leases: st.Leases, LastFullSync: st.LastFullSync,
	}
	for _, m := range a.cl.Members() {
		switch m.State {
		case cluster.MemberAlive:
			out.Members.Alive++
		case cluster.MemberFailed:
			out.Members.Dead++
		case cluster.MemberLeft:
			out.Members.Left++
		}
	}
	// memberlist counts a suspect as alive until it is declared failed.
	out.Members.Suspect = min(st.Suspect, out.Members.Alive)
	out.Members.Alive -= out.Members.Suspect
	return out
}

// Warn adds a warning that `fabricctl status` shows until the agent stops.
func (a *Agent) Warn(w string) { a.health.warn(w) }
