package dns

import (
	"sync/atomic"
	"time"

	"github.com/fabricnet/fabric/metrics"
)

// Stats is a snapshot of the server's counters, for `fabricctl status` and
// metrics. Query counters count replies by outcome, so they add up to the
// number of queries answered.
type Stats struct {
	Attached  int      // sandboxes with a resolver
	Records   int      // records in the current table
	Upstreams []string // upstreams in use (host:port)
	Inflight  int      // forwarded queries waiting for an upstream now

	Local            uint64 // answered from the table (including NOERROR with no data)
	NXDomain         uint64 // always 0: a name out of the querier's scope is forwarded like an unknown one (kept for the metric's label set)
	Forwarded        uint64 // answered by an upstream
	ForwardFailed    uint64 // SERVFAIL: no upstream, all failed or timed out, or over MaxInflight or the sandbox's share
	InflightRejected uint64 // the part of ForwardFailed refused because MaxInflight or the sandbox's share was reached
	Refused          uint64 // well-formed but unsupported (opcode, class, EDNS version), or a forward a sandbox may not make (internal networks only)
	Malformed        uint64 // unparseable packets, responses, not exactly one question

	// Upstream latency of successful forwards.
	UpstreamCount uint64
	UpstreamSum   time.Duration
	// UpstreamBuckets count forwards that took at most Le, cumulative as
	// a Prometheus histogram; the last bucket's Le is 0 and means +Inf.
	// The type is the metrics package's (its snapshot takes them as they
	// are); that package knows nothing of this one.
	UpstreamBuckets []metrics.LatencyBucket
}

var latencyBounds = [...]time.Duration{
	time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond,
	50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2 * time.Second,
}

type counters struct {
	local, forwarded, forwardFailed      atomic.Uint64
	inflightRejected, refused, malformed atomic.Uint64
	upCount, upSumNanos                  atomic.Uint64
	upBuckets                            [len(latencyBounds) + 1]atomic.Uint64
}

func (c *counters) observeUpstream(d time.Duration) {
	c.upCount.Add(1)
	c.upSumNanos.Add(uint64(d))
	i := 0
	for i < len(latencyBounds) && d > latencyBounds[i] {
		i++
	}
	c.upBuckets[i].Add(1)
}

func (c *counters) snapshot(st *Stats) {
	st.Local = c.local.Load()
	st.Forwarded = c.forwarded.Load()
	st.ForwardFailed = c.forwardFailed.Load()
	st.InflightRejected = c.inflightRejected.Load()
	st.Refused = c.refused.Load()
	st.Malformed = c.malformed.Load()
	st.UpstreamCount = c.upCount.Load()
	st.UpstreamSum = time.Duration(c.upSumNanos.Load())
	var cum uint64
	st.UpstreamBuckets = make([]metrics.LatencyBucket, 0, len(c.upBuckets))
	for i := range c.upBuckets {
		cum += c.upBuckets[i].Load()
		var le time.Duration
		if i < len(latencyBounds) {
			le = latencyBounds[i]
		}
		st.UpstreamBuckets = append(st.UpstreamBuckets, metrics.LatencyBucket{Le: le, Count: cum})
	}
}
