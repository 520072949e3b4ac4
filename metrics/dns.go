package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// dnsCollector exports the embedded DNS server's counters. Its latency
// histogram is kept by the dns package itself (cumulative buckets in its
// Stats) and re-exported here as a constant histogram, so the DNS hot path
// does not depend on Prometheus.
type dnsCollector struct {
	src DNSSource

	queries, rejected                      *prometheus.Desc
	resolvers, records, upstreams, pending *prometheus.Desc
	latency                                *prometheus.Desc
}

func newDNSCollector(src DNSSource) *dnsCollector {
	return &dnsCollector{
		src: src,
		queries: prometheus.NewDesc("fabric_dns_queries_total",
			"DNS queries answered by the embedded server, by result: local, nxdomain, forwarded, forward_failed (SERVFAIL), refused, malformed.",
			[]string{"result"}, nil),
		rejected: prometheus.NewDesc("fabric_dns_inflight_rejected_total",
			"Queries answered SERVFAIL at once because too many forwards were in flight (part of result=\"forward_failed\").",
			nil, nil),
		resolvers: prometheus.NewDesc("fabric_dns_resolvers",
			"Sandboxes with a running resolver.", nil, nil),
		records: prometheus.NewDesc("fabric_dns_records",
			"Name records the embedded server answers from.", nil, nil),
		upstreams: prometheus.NewDesc("fabric_dns_upstreams",
			"Upstream resolvers other names are forwarded to.", nil, nil),
		pending: prometheus.NewDesc("fabric_dns_inflight_queries",
			"Forwarded queries waiting for an upstream now.", nil, nil),
		latency: prometheus.NewDesc("fabric_dns_upstream_latency_seconds",
			"How long successful forwards took to be answered by an upstream.", nil, nil),
	}
}

func (c *dnsCollector) Describe(ch chan<- *prometheus.Desc) {
	describeAll(ch, c.queries, c.rejected, c.resolvers, c.records, c.upstreams, c.pending, c.latency)
}

func (c *dnsCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.DNSMetrics()
	for _, q := range []struct {
		result string
		n      uint64
	}{
		{"local", s.Local}, {"nxdomain", s.NXDomain}, {"forwarded", s.Forwarded},
		{"forward_failed", s.ForwardFailed}, {"refused", s.Refused}, {"malformed", s.Malformed},
	} {
		ch <- prometheus.MustNewConstMetric(c.queries, prometheus.CounterValue, float64(q.n), q.result)
	}
	ch <- prometheus.MustNewConstMetric(c.rejected, prometheus.CounterValue, float64(s.InflightRejected))
	ch <- prometheus.MustNewConstMetric(c.resolvers, prometheus.GaugeValue, float64(s.Resolvers))
	ch <- prometheus.MustNewConstMetric(c.records, prometheus.GaugeValue, float64(s.Records))
	ch <- prometheus.MustNewConstMetric(c.upstreams, prometheus.GaugeValue, float64(s.Upstreams))
	ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(s.Inflight))
	buckets := make(map[float64]uint64, len(s.UpstreamBuckets))
	for _, b := range s.UpstreamBuckets {
		if b.Le > 0 { // Le 0 is +Inf, which Prometheus derives from the count
			buckets[b.Le.Seconds()] = b.Count
		}
	}
	ch <- prometheus.MustNewConstHistogram(c.latency, s.UpstreamCount, s.UpstreamSum.Seconds(), buckets)
}
