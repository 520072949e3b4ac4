package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// datapathCollector reads the datapath's counters at scrape time: the
// counters live in BPF maps (or the kernel), so copying them into Prometheus
// counters on a timer would only add lag and a goroutine.
type datapathCollector struct {
	src DatapathSource

	packets, bytes        *prometheus.Desc
	ctEntries, ctCapacity *prometheus.Desc
	natFailures           *prometheus.Desc
	mapFull               *prometheus.Desc
	ctQuota               *prometheus.Desc
	ctEvictions           *prometheus.Desc
	skippedRemotes        *prometheus.Desc
	repairs               *prometheus.Desc
	programs              *prometheus.Desc
	// readErrors is the one value the collector owns: it must survive the
	// scrapes it is about, which return nothing from the source.
	readErrors prometheus.Counter
}

func newDatapathCollector(src DatapathSource) *datapathCollector {
	cell := []string{"direction", "verdict", "reason"}
	return &datapathCollector{
		src: src,
		packets: prometheus.NewDesc("fabric_datapath_packets_total",
			"Packets seen by the datapath, by where (direction), what it did (verdict) and why (reason).", cell, nil),
		bytes: prometheus.NewDesc("fabric_datapath_bytes_total",
			"Bytes seen by the datapath, by direction, verdict and reason.", cell, nil),
		ctEntries: prometheus.NewDesc("fabric_conntrack_entries",
			"Connections in the connection-tracking table NAT relies on.", nil, nil),
		ctCapacity: prometheus.NewDesc("fabric_conntrack_capacity",
			"Size of the connection-tracking table; new connections are refused or evict old ones when it is full.", nil, nil),
		natFailures: prometheus.NewDesc("fabric_nat_allocation_failures_total",
			"Connections that could not get a source port for masquerade.", nil, nil),
		mapFull: prometheus.NewDesc("fabric_datapath_map_full_total",
			"Inserts the datapath refused because a map was full, by map.", []string{"map"}, nil),
		ctEvictions: prometheus.NewDesc("fabric_conntrack_evictions_total",
			"Connection-table entries evicted to make room for new ones (the table was full); established connections may be among them.", nil, nil),
		ctQuota: prometheus.NewDesc("fabric_conntrack_quota_drops_total",
			"New connections dropped because their source had too many unanswered ones (a SYN or UDP flood); other connections are untouched.", nil, nil),
		skippedRemotes: prometheus.NewDesc("fabric_overlay_remotes_skipped_total",
			"Remote endpoints of overlay networks left out as unusable (each counted once when it appears), by reason.", []string{"reason"}, nil),
		repairs: prometheus.NewDesc("fabric_datapath_repairs_total",
			"Datapath objects a reconcile pass found missing or changed (drift) and put back, by kind of object.", []string{"object"}, nil),
		programs: prometheus.NewDesc("fabric_datapath_programs_attached",
			"Datapath programs attached now, by hook.", []string{"hook"}, nil),
		readErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fabric_datapath_read_errors_total",
			Help: "Scrapes in which the datapath's counters could not be read (those scrapes have no datapath metrics).",
		}),
	}
}

func (c *datapathCollector) Describe(ch chan<- *prometheus.Desc) {
	describeAll(ch, c.packets, c.bytes, c.ctEntries, c.ctCapacity, c.natFailures, c.mapFull, c.ctEvictions, c.ctQuota, c.skippedRemotes, c.repairs, c.programs)
	c.readErrors.Describe(ch)
}

func (c *datapathCollector) Collect(ch chan<- prometheus.Metric) {
	defer c.readErrors.Collect(ch)
	s, err := c.src.DatapathMetrics()
	if err != nil {
		c.readErrors.Inc()
		return
	}
	type key struct{ direction, verdict, reason string }
	sums := make(map[key]DatapathCounter, len(s.Counters))
	for _, dc := range s.Counters {
		// Two cells with one label set would make the whole scrape fail
		// ("collected before with the same name and label values").
		k := key{dc.Direction, dc.Verdict, dc.Reason}
		sum := sums[k]
		sum.Packets += dc.Packets
		sum.Bytes += dc.Bytes
		sums[k] = sum
	}
	for k, v := range sums {
		ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(v.Packets), k.direction, k.verdict, k.reason)
		if v.Packets > 0 && v.Bytes == 0 {
			// Events without a length (the cgroup socket hooks count
			// connections and datagrams, not bytes): a bytes series would
			// be a lie that stays at 0.
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(v.Bytes), k.direction, k.verdict, k.reason)
	}
	if ct := s.Conntrack; ct != nil {
		ch <- prometheus.MustNewConstMetric(c.ctEntries, prometheus.GaugeValue, float64(ct.Entries))
		ch <- prometheus.MustNewConstMetric(c.ctCapacity, prometheus.GaugeValue, float64(ct.Capacity))
		ch <- prometheus.MustNewConstMetric(c.ctEvictions, prometheus.CounterValue, float64(s.ConntrackEvictions))
	}
	ch <- prometheus.MustNewConstMetric(c.natFailures, prometheus.CounterValue, float64(s.NATAllocationFailures))
	for m, n := range s.MapFull {
		ch <- prometheus.MustNewConstMetric(c.mapFull, prometheus.CounterValue, float64(n), m)
	}
	ch <- prometheus.MustNewConstMetric(c.ctQuota, prometheus.CounterValue, float64(s.ConntrackQuotaDrops))
	for reason, n := range s.SkippedRemotes {
		ch <- prometheus.MustNewConstMetric(c.skippedRemotes, prometheus.CounterValue, float64(n), reason)
	}
	for object, n := range s.Repairs {
		ch <- prometheus.MustNewConstMetric(c.repairs, prometheus.CounterValue, float64(n), object)
	}
	for hook, n := range s.Programs {
		ch <- prometheus.MustNewConstMetric(c.programs, prometheus.GaugeValue, float64(n), hook)
	}
}
