package metrics

import (
	"errors"
	"maps"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// fakeSources is every source in one type, as the agent may be: the
// per-family method names make that possible.
type fakeSources struct {
	mu      sync.Mutex
	dp      DatapathSnapshot
	dpErr   error
	agent   AgentSnapshot
	cluster ClusterSnapshot
	dns     DNSSnapshot
}

var (
	_ DatapathSource = (*fakeSources)(nil)
	_ AgentSource    = (*fakeSources)(nil)
	_ ClusterSource  = (*fakeSources)(nil)
	_ DNSSource      = (*fakeSources)(nil)
)

func (f *fakeSources) DatapathMetrics() (DatapathSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dp, f.dpErr
}

func (f *fakeSources) AgentMetrics() AgentSnapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.agent
}

func (f *fakeSources) ClusterMetrics() ClusterSnapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cluster
}

func (f *fakeSources) DNSMetrics() DNSSnapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dns
}

// update changes the fake under its lock, as the agent's state changes
// between scrapes.
func (f *fakeSources) update(fn func(f *fakeSources)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeSources) sources(api *APIMetrics) Sources {
	return Sources{Datapath: f, Agent: f, Cluster: f, DNS: f, API: api}
}

var (
	fakeStart = time.Unix(1700000000, 0)
	fakeSync  = time.Unix(1700000500, 500_000_000)
)

// newFakeSources fills every field, so that every metric family appears.
func newFakeSources() *fakeSources {
	return &fakeSources{
		dp: DatapathSnapshot{
			Counters: []DatapathCounter{
				{Direction: "from-endpoint", Verdict: "redirect", Reason: "forward", Packets: 100, Bytes: 64000},
				{Direction: "from-endpoint", Verdict: "drop", Reason: "spoofed-ip", Packets: 3, Bytes: 180},
				{Direction: "to-uplink", Verdict: "pass", Reason: "snat", Packets: 10, Bytes: 1500},
			},
			Conntrack:             &TableUsage{Entries: 120, Capacity: 65536},
			NATAllocationFailures: 2,
			MapFull:               map[string]uint64{"endpoints": 1},
			ConntrackQuotaDrops:   7,
			ConntrackEvictions:    5,
			SkippedRemotes:        map[string]uint64{"duplicate": 2},
			Programs:              map[string]int{"tc-endpoint": 4, "xdp-uplink": 1},
		},
		agent: AgentSnapshot{
			Started: fakeStart,
			Networks: []NetworkUsage{
				{Name: "bridge", Driver: "bridge", Endpoints: 2, IPsUsed: 3, IPsFree: 65530},
				{Name: "vlan10", Driver: "macvlan", Unhealthy: true, Endpoints: 1, IPsUsed: 2, IPsFree: 251},
				{Name: "ov", Driver: "overlay", Endpoints: 1, IPsUsed: 1, IPsFree: 253, AddressConflicts: 1},
			},
			Sandboxes: 3,
			Reconcile: ReconcileStats{Runs: 2, Errors: 1, LastDuration: 250 * time.Millisecond, LastSuccess: fakeStart},
		},
		cluster: ClusterSnapshot{
			Members:          MemberCounts{Alive: 2, Dead: 1},
			MessagesSent:     40,
			MessagesReceived: 38,
			SendErrors:       1,
			Dropped:          map[string]uint64{"stale": 4},
			EventsDropped:    0,
			HealthScore:      1,
			Leases:           2,
			LastFullSync:     fakeSync,
		},
		dns: DNSSnapshot{
			Resolvers: 3, Records: 6, Upstreams: 2, Inflight: 1,
			Local: 50, NXDomain: 2, Forwarded: 10, ForwardFailed: 1, Refused: 0, Malformed: 1, InflightRejected: 1,
			UpstreamCount: 10,
			UpstreamSum:   120 * time.Millisecond,
			UpstreamBuckets: []LatencyBucket{
				{Le: 5 * time.Millisecond, Count: 4},
				{Le: 25 * time.Millisecond, Count: 9},
				{Le: time.Second, Count: 10},
				{Le: 0, Count: 10},
			},
		},
	}
}

// newFullRegistry is a registry in which every fabric family has at least
// one sample (the API instruments need a request for that).
func newFullRegistry(t *testing.T) (*prometheus.Registry, *fakeSources) {
	t.Helper()
	f := newFakeSources()
	api := NewAPIMetrics()
	api.Observe("GET /v1/status", 200, 3*time.Millisecond)
	return NewRegistry("v1.2.3", "ebpf", f.sources(api)), f
}

// gather returns what gatherFn (a registry's Gather) gathers; an error
// fails the test.
func gather[F any](t *testing.T, gatherFn func() (F, error)) F {
	t.Helper()
	fams, err := gatherFn()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	return fams
}

// sampleNames lists every sample name reg exposes: family names, plus the
// _bucket/_sum/_count series of histograms and summaries, which is what
// PromQL sees.
func sampleNames(t *testing.T, reg prometheus.Gatherer) map[string]bool {
	t.Helper()
	fams := gather(t, reg.Gather)
	names := map[string]bool{}
	for _, mf := range fams {
		n := mf.GetName()
		names[n] = true
		switch mf.GetType().String() {
		case "HISTOGRAM", "GAUGE_HISTOGRAM":
			names[n+"_bucket"], names[n+"_sum"], names[n+"_count"] = true, true, true
		case "SUMMARY":
			names[n+"_sum"], names[n+"_count"] = true, true
		}
	}
	return names
}

// familyNames lists the fabric_ families reg exposes, sorted.
func familyNames(t *testing.T, reg prometheus.Gatherer) []string {
	t.Helper()
	fams := gather(t, reg.Gather)
	var out []string
	for _, mf := range fams {
		if strings.HasPrefix(mf.GetName(), "fabric_") {
			out = append(out, mf.GetName())
		}
	}
	sort.Strings(out)
	return out
}

// value returns the value of the one sample of name whose labels include
// want; counters, gauges and untyped values, or a histogram's count.
func value(t *testing.T, reg prometheus.Gatherer, name string, want map[string]string) float64 {
	t.Helper()
	fams := gather(t, reg.Gather)
	var found []float64
	for _, mf := range fams {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue metric
				}
			}
			switch {
			case m.GetCounter() != nil:
				found = append(found, m.GetCounter().GetValue())
			case m.GetGauge() != nil:
				found = append(found, m.GetGauge().GetValue())
			case m.GetHistogram() != nil:
				found = append(found, float64(m.GetHistogram().GetSampleCount()))
			default:
				found = append(found, m.GetUntyped().GetValue())
			}
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s%v: %d samples, want 1", name, want, len(found))
	}
	return found[0]
}

// promtool returns the promtool binary or skips the test: it comes with
// the Debian package prometheus (make deps installs it).
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not found (Debian package prometheus; `make deps` installs it): skipping the promtool checks")
	}
	return p
}

// runPromtool runs promtool with args (and stdin, if any) and fails the
// test with its output if it reports a problem.
func runPromtool(t *testing.T, bin, stdin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("promtool %s: %v", strings.Join(args, " "), err)
		}
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
