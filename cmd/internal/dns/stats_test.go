package dns

import (
	"slices"
	"testing"
	"time"

	"github.com/fabricnet/fabric/metrics"
)

// TestUpstreamBucketsAreTheMetricsBuckets: the upstream latency histogram
// is cumulative, ends with the +Inf bucket (Le 0), and is kept in the
// metrics package's bucket type, the only one (the agent hands it over
// as it is; a second type of the same shape would not compile here).
func TestUpstreamBucketsAreTheMetricsBuckets(t *testing.T) {
	var c counters
	for _, d := range []time.Duration{500 * time.Microsecond, 3 * time.Millisecond, 3 * time.Millisecond, 5 * time.Second} {
		c.observeUpstream(d)
	}
	var st Stats
	c.snapshot(&st)
	want := []metrics.LatencyBucket{
		{Le: time.Millisecond, Count: 1}, {Le: 5 * time.Millisecond, Count: 3}, {Le: 10 * time.Millisecond, Count: 3},
		{Le: 25 * time.Millisecond, Count: 3}, {Le: 50 * time.Millisecond, Count: 3}, {Le: 100 * time.Millisecond, Count: 3},
		{Le: 250 * time.Millisecond, Count: 3}, {Le: 500 * time.Millisecond, Count: 3}, {Le: time.Second, Count: 3},
		{Le: 2 * time.Second, Count: 3}, {Le: 0, Count: 4},
	}
	if !slices.Equal(st.UpstreamBuckets, want) {
		t.Errorf("upstream buckets %v, want %v", st.UpstreamBuckets, want)
	}
	if st.UpstreamCount != 4 {
		t.Errorf("upstream count %d, want 4", st.UpstreamCount)
	}
}
