package metrics

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// wantExposition is what newFullRegistry's registry exposes, in the text
// format, every fabric family but the API duration histogram.
var wantExposition = `
# HELP fabric_build_info Always 1; the labels say which fabric build runs, and with which datapath.
# TYPE fabric_build_info gauge
fabric_build_info{datapath="ebpf",go_version="` + runtime.Version() + `",version="v1.2.3"} 1
# HELP fabric_datapath_packets_total Packets seen by the datapath, by where (direction), what it did (verdict) and why (reason).
# TYPE fabric_datapath_packets_total counter
fabric_datapath_packets_total{direction="from-endpoint",reason="forward",verdict="redirect"} 100
fabric_datapath_packets_total{direction="from-endpoint",reason="spoofed-ip",verdict="drop"} 3
fabric_datapath_packets_total{direction="to-uplink",reason="snat",verdict="pass"} 10
# HELP fabric_datapath_bytes_total Bytes seen by the datapath, by direction, verdict and reason.
# TYPE fabric_datapath_bytes_total counter
fabric_datapath_bytes_total{direction="from-endpoint",reason="forward",verdict="redirect"} 64000
fabric_datapath_bytes_total{direction="from-endpoint",reason="spoofed-ip",verdict="drop"} 180
fabric_datapath_bytes_total{direction="to-uplink",reason="snat",verdict="pass"} 1500
# HELP fabric_conntrack_entries Connections in the connection-tracking table NAT relies on.
# TYPE fabric_conntrack_entries gauge
fabric_conntrack_entries 120
# HELP fabric_conntrack_capacity Size of the connection-tracking table; new connections are refused or evict old ones when it is full.
# TYPE fabric_conntrack_capacity gauge
fabric_conntrack_capacity 65536
# HELP fabric_conntrack_evictions_total Connection-table entries evicted to make room for new ones (the table was full); established connections may be among them.
# TYPE fabric_conntrack_evictions_total counter
fabric_conntrack_evictions_total 5
# HELP fabric_nat_allocation_failures_total Connections that could not get a source port for masquerade.
# TYPE fabric_nat_allocation_failures_total counter
fabric_nat_allocation_failures_total 2
# HELP fabric_datapath_map_full_total Inserts the datapath refused because a map was full, by map.
# TYPE fabric_datapath_map_full_total counter
fabric_datapath_map_full_total{map="endpoints"} 1
# HELP fabric_conntrack_quota_drops_total New connections dropped because their source had too many unanswered ones (a SYN or UDP flood); other connections are untouched.
# TYPE fabric_conntrack_quota_drops_total counter
fabric_conntrack_quota_drops_total 7
# HELP fabric_overlay_remotes_skipped_total Remote endpoints of overlay networks left out as unusable (each counted once when it appears), by reason.
# TYPE fabric_overlay_remotes_skipped_total counter
fabric_overlay_remotes_skipped_total{reason="duplicate"} 2
# HELP fabric_datapath_programs_attached Datapath programs attached now, by hook.
# TYPE fabric_datapath_programs_attached gauge
fabric_datapath_programs_attached{hook="tc-endpoint"} 4
fabric_datapath_programs_attached{hook="xdp-uplink"} 1
# HELP fabric_datapath_read_errors_total Scrapes in which the datapath's counters could not be read (those scrapes have no datapath metrics).
# TYPE fabric_datapath_read_errors_total counter
fabric_datapath_read_errors_total 0
# HELP fabric_agent_start_time_seconds When the agent started, in seconds since the Unix epoch.
# TYPE fabric_agent_start_time_seconds gauge
fabric_agent_start_time_seconds 1.7e+09
# HELP fabric_networks Networks on this host.
# TYPE fabric_networks gauge
fabric_networks 3
# HELP fabric_network_healthy 1 if the network works, 0 while it cannot (for example its macvlan parent is missing).
# TYPE fabric_network_healthy gauge
fabric_network_healthy{driver="bridge",network="bridge"} 1
fabric_network_healthy{driver="macvlan",network="vlan10"} 0
fabric_network_healthy{driver="overlay",network="ov"} 1
# HELP fabric_endpoints Endpoints on this host, by network.
# TYPE fabric_endpoints gauge
fabric_endpoints{driver="bridge",network="bridge"} 2
fabric_endpoints{driver="macvlan",network="vlan10"} 1
fabric_endpoints{driver="overlay",network="ov"} 1
# HELP fabric_ipam_addresses Addresses of the network's dynamic pool on this host, used or free; used/(used+free) is how full it is.
# TYPE fabric_ipam_addresses gauge
fabric_ipam_addresses{network="bridge",state="free"} 65530
fabric_ipam_addresses{network="bridge",state="used"} 3
fabric_ipam_addresses{network="ov",state="free"} 253
fabric_ipam_addresses{network="ov",state="used"} 1
fabric_ipam_addresses{network="vlan10",state="free"} 251
fabric_ipam_addresses{network="vlan10",state="used"} 2
# HELP fabric_overlay_address_conflicts Endpoints on this host whose overlay address another node also uses and holds (lost after a partition); they keep running, cut off from other hosts.
# TYPE fabric_overlay_address_conflicts gauge
fabric_overlay_address_conflicts{network="ov"} 1
# HELP fabric_sandboxes Sandboxes on this host.
# TYPE fabric_sandboxes gauge
fabric_sandboxes 3
# HELP fabric_reconciles_total Runs that made the kernel match the stored records.
# TYPE fabric_reconciles_total counter
fabric_reconciles_total 2
# HELP fabric_reconcile_errors_total Reconcile runs that failed.
# TYPE fabric_reconcile_errors_total counter
fabric_reconcile_errors_total 1
# HELP fabric_reconcile_last_duration_seconds How long the last reconcile run took, failed or not.
# TYPE fabric_reconcile_last_duration_seconds gauge
fabric_reconcile_last_duration_seconds 0.25
# HELP fabric_reconcile_last_success_timestamp_seconds When a reconcile run last succeeded, in seconds since the Unix epoch.
# TYPE fabric_reconcile_last_success_timestamp_seconds gauge
fabric_reconcile_last_success_timestamp_seconds 1.7e+09
# HELP fabric_cluster_members Cluster members as this node sees them, by state (alive, suspect, failed, left), the words of fabricctl status.
# TYPE fabric_cluster_members gauge
fabric_cluster_members{state="alive"} 2
fabric_cluster_members{state="failed"} 1
fabric_cluster_members{state="left"} 0
fabric_cluster_members{state="suspect"} 0
# HELP fabric_gossip_messages_total Gossip messages sent (broadcasts queued and direct messages) and received (decoded and handled).
# TYPE fabric_gossip_messages_total counter
fabric_gossip_messages_total{direction="received"} 38
fabric_gossip_messages_total{direction="sent"} 40
# HELP fabric_gossip_send_errors_total Direct gossip messages that could not be delivered.
# TYPE fabric_gossip_send_errors_total counter
fabric_gossip_send_errors_total 1
# HELP fabric_gossip_dropped_total Gossip messages received but not applied, by reason.
# TYPE fabric_gossip_dropped_total counter
fabric_gossip_dropped_total{reason="stale"} 4
# HELP fabric_cluster_events_dropped_total Cluster events lost because the agent read them too slowly (each loss forces a full resync).
# TYPE fabric_cluster_events_dropped_total counter
fabric_cluster_events_dropped_total 0
# HELP fabric_cluster_health_score memberlist's awareness score: 0 is healthy; higher means this node answers probes late and is likely the faulty one.
# TYPE fabric_cluster_health_score gauge
fabric_cluster_health_score 1
# HELP fabric_cluster_leases Address blocks this node holds.
# TYPE fabric_cluster_leases gauge
fabric_cluster_leases 2
# HELP fabric_cluster_last_full_sync_timestamp_seconds When this node last exchanged full state with a peer, in seconds since the Unix epoch.
# TYPE fabric_cluster_last_full_sync_timestamp_seconds gauge
fabric_cluster_last_full_sync_timestamp_seconds 1.7000005005e+09
# HELP fabric_dns_queries_total DNS queries answered by the embedded server, by result: local, nxdomain, forwarded, forward_failed (SERVFAIL), refused, malformed.
# TYPE fabric_dns_queries_total counter
fabric_dns_queries_total{result="forward_failed"} 1
fabric_dns_queries_total{result="forwarded"} 10
fabric_dns_queries_total{result="local"} 50
fabric_dns_queries_total{result="malformed"} 1
fabric_dns_queries_total{result="nxdomain"} 2
fabric_dns_queries_total{result="refused"} 0
# HELP fabric_dns_inflight_rejected_total Queries answered SERVFAIL at once because too many forwards were in flight (part of result="forward_failed").
# TYPE fabric_dns_inflight_rejected_total counter
fabric_dns_inflight_rejected_total 1
# HELP fabric_dns_resolvers Sandboxes with a running resolver.
# TYPE fabric_dns_resolvers gauge
fabric_dns_resolvers 3
# HELP fabric_dns_records Name records the embedded server answers from.
# TYPE fabric_dns_records gauge
fabric_dns_records 6
# HELP fabric_dns_upstreams Upstream resolvers other names are forwarded to.
# TYPE fabric_dns_upstreams gauge
fabric_dns_upstreams 2
# HELP fabric_dns_inflight_queries Forwarded queries waiting for an upstream now.
# TYPE fabric_dns_inflight_queries gauge
fabric_dns_inflight_queries 1
# HELP fabric_dns_upstream_latency_seconds How long successful forwards took to be answered by an upstream.
# TYPE fabric_dns_upstream_latency_seconds histogram
fabric_dns_upstream_latency_seconds_bucket{le="0.005"} 4
fabric_dns_upstream_latency_seconds_bucket{le="0.025"} 9
fabric_dns_upstream_latency_seconds_bucket{le="1"} 10
fabric_dns_upstream_latency_seconds_bucket{le="+Inf"} 10
fabric_dns_upstream_latency_seconds_sum 0.12
fabric_dns_upstream_latency_seconds_count 10
# HELP fabric_api_requests_total API requests served, by HTTP method, route (the path pattern) and HTTP status code.
# TYPE fabric_api_requests_total counter
fabric_api_requests_total{code="200",method="GET",route="/v1/status"} 1
`

func TestExposition(t *testing.T) {
	reg, _ := newFullRegistry(t)
	// Every fabric family but the API duration histogram, whose buckets
	// would only repeat the client library's arithmetic.
	names := familyNames(t, reg)
	names = slices.DeleteFunc(names, func(n string) bool { return n == "fabric_api_request_duration_seconds" })
	if err := testutil.GatherAndCompare(reg, strings.NewReader(wantExposition), names...); err != nil {
		t.Fatal(err)
	}
}

// TestLint runs the client library's linter (the checks `promtool check
// metrics` makes) over everything the registry exposes, Go and process
// collectors included.
func TestLint(t *testing.T) {
	reg, _ := newFullRegistry(t)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

// TestValuesFollowSources checks that nothing is cached between scrapes:
// every scrape reads the sources again.
func TestValuesFollowSources(t *testing.T) {
	reg, f := newFullRegistry(t)
	fwd := map[string]string{"direction": "from-endpoint", "verdict": "redirect", "reason": "forward"}
	if got := value(t, reg, "fabric_datapath_packets_total", fwd); got != 100 {
		t.Fatalf("packets before: %v, want 100", got)
	}
	if got := value(t, reg, "fabric_cluster_members", map[string]string{"state": "failed"}); got != 1 {
		t.Fatalf("dead members before: %v, want 1", got)
	}

	f.update(func(f *fakeSources) {
		f.dp.Counters = []DatapathCounter{
			{Direction: "from-endpoint", Verdict: "redirect", Reason: "forward", Packets: 250, Bytes: 99000},
			{Direction: "from-endpoint", Verdict: "drop", Reason: "cross-network", Packets: 7, Bytes: 420},
		}
		f.dp.Conntrack = &TableUsage{Entries: 60000, Capacity: 65536}
		f.agent.Networks = append(f.agent.Networks, NetworkUsage{Name: "front", Driver: "bridge", Endpoints: 5, IPsUsed: 6, IPsFree: 120})
		f.agent.Sandboxes = 8
		f.cluster.Members = MemberCounts{Alive: 3}
		f.cluster.MessagesSent = 41
		f.dns.Forwarded = 11
		f.dns.UpstreamCount = 11
	})

	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"fabric_datapath_packets_total", fwd, 250},
		{"fabric_datapath_bytes_total", fwd, 99000},
		{"fabric_datapath_packets_total", map[string]string{"verdict": "drop", "reason": "cross-network"}, 7},
		{"fabric_conntrack_entries", nil, 60000},
		{"fabric_networks", nil, 4},
		{"fabric_overlay_address_conflicts", map[string]string{"network": "ov"}, 1},
		{"fabric_endpoints", map[string]string{"network": "front"}, 5},
		{"fabric_ipam_addresses", map[string]string{"network": "front", "state": "used"}, 6},
		{"fabric_sandboxes", nil, 8},
		{"fabric_cluster_members", map[string]string{"state": "alive"}, 3},
		{"fabric_cluster_members", map[string]string{"state": "failed"}, 0},
		{"fabric_gossip_messages_total", map[string]string{"direction": "sent"}, 41},
		{"fabric_dns_queries_total", map[string]string{"result": "forwarded"}, 11},
		{"fabric_dns_upstream_latency_seconds", nil, 11},
	} {
		if got := value(t, reg, c.name, c.labels); got != c.want {
			t.Errorf("%s%v after the change: %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// A counter cell the datapath no longer reports is gone, not frozen.
	fams, _ := reg.Gather()
	for _, mf := range fams {
		if mf.GetName() == "fabric_datapath_packets_total" && len(mf.GetMetric()) != 2 {
			t.Errorf("fabric_datapath_packets_total has %d series, want the 2 the source reports", len(mf.GetMetric()))
		}
	}
}

func TestNilSourcesLeaveFamiliesOut(t *testing.T) {
	reg := NewRegistry("dev", "kernel", Sources{})
	if got := familyNames(t, reg); !slices.Equal(got, []string{"fabric_build_info"}) {
		t.Errorf("fabric families with no sources: %v, want only fabric_build_info", got)
	}
	names := sampleNames(t, reg)
	for _, n := range []string{"go_goroutines", "process_start_time_seconds"} {
		if runtime.GOOS == "linux" && !names[n] {
			t.Errorf("%s missing: the Go and process collectors should always be there", n)
		}
	}
}

func TestOptionalValuesLeftOut(t *testing.T) {
	f := newFakeSources()
	f.dp.Conntrack = nil
	f.agent.Started = time.Time{}
	f.agent.Reconcile = ReconcileStats{}
	f.cluster.LastFullSync = time.Time{}
	names := sampleNames(t, NewRegistry("dev", "kernel", f.sources(nil)))
	for _, n := range []string{
		"fabric_conntrack_entries", "fabric_conntrack_capacity", "fabric_agent_start_time_seconds",
		"fabric_reconcile_last_duration_seconds", "fabric_reconcile_last_success_timestamp_seconds",
		"fabric_cluster_last_full_sync_timestamp_seconds",
	} {
		if names[n] {
			t.Errorf("%s exported although the source has no value for it", n)
		}
	}
	// Zero counters are still there: rate() needs the zero to see the first
	// increment.
	if !names["fabric_reconcile_errors_total"] || !names["fabric_nat_allocation_failures_total"] {
		t.Error("zero-valued counters must be exported")
	}
}

// TestDatapathReadError checks that a datapath that cannot be read costs
// its own families only, and is counted.
func TestDatapathReadError(t *testing.T) {
	reg, f := newFullRegistry(t)
	f.update(func(f *fakeSources) { f.dpErr = errors.New("read counters: map gone") })
	for range 2 {
		srv := httptest.NewServer(Handler(reg, nil))
		resp, err := http.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		srv.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("scrape with a failing datapath: %s\n%s", resp.Status, body)
		}
	}
	names := sampleNames(t, reg) // the third scrape
	if names["fabric_datapath_packets_total"] || names["fabric_conntrack_entries"] {
		t.Error("datapath families exported although the datapath could not be read")
	}
	if !names["fabric_networks"] || !names["fabric_cluster_members"] {
		t.Error("other families must survive a datapath read error")
	}
	if got := value(t, reg, "fabric_datapath_read_errors_total", nil); got != 4 {
		t.Errorf("fabric_datapath_read_errors_total = %v after 4 failed reads, want 4", got)
	}

	f.update(func(f *fakeSources) { f.dpErr = nil })
	if got := value(t, reg, "fabric_conntrack_entries", nil); got != 120 {
		t.Errorf("conntrack entries after recovery: %v, want 120", got)
	}
}

func TestDuplicateCountersSummed(t *testing.T) {
	f := newFakeSources()
	f.dp.Counters = []DatapathCounter{
		{Direction: "from-uplink", Verdict: "drop", Reason: "malformed", Packets: 1, Bytes: 60},
		{Direction: "from-uplink", Verdict: "drop", Reason: "malformed", Packets: 2, Bytes: 120},
	}
	reg := NewRegistry("dev", "ebpf", Sources{Datapath: f})
	l := map[string]string{"reason": "malformed"}
	if got := value(t, reg, "fabric_datapath_packets_total", l); got != 3 {
		t.Errorf("packets = %v, want the sum 3", got)
	}
	if got := value(t, reg, "fabric_datapath_bytes_total", l); got != 180 {
		t.Errorf("bytes = %v, want the sum 180", got)
	}
}

func TestSourceFuncs(t *testing.T) {
	f := newFakeSources()
	reg := NewRegistry("dev", "ebpf", Sources{
		Datapath: DatapathSourceFunc(f.DatapathMetrics),
		Agent:    AgentSourceFunc(f.AgentMetrics),
		Cluster:  ClusterSourceFunc(f.ClusterMetrics),
		DNS:      DNSSourceFunc(f.DNSMetrics),
	})
	for _, n := range []string{"fabric_conntrack_entries", "fabric_sandboxes", "fabric_cluster_leases", "fabric_dns_records"} {
		if !sampleNames(t, reg)[n] {
			t.Errorf("%s missing with func sources", n)
		}
	}
}

// TestRegistriesIndependent guards against the global registry: two agents
// in one test process must not collide.
func TestRegistriesIndependent(t *testing.T) {
	api := NewAPIMetrics()
	_ = NewRegistry("dev", "kernel", newFakeSources().sources(api))
	_ = NewRegistry("dev", "kernel", newFakeSources().sources(api))
	var _ prometheus.Collector = api
}
