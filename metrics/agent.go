package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// agentCollector exports the agent's records. They are read at scrape
// time rather than mirrored into gauges on every change, so a metric can
// never disagree with `fabricctl network ls`.
type agentCollector struct {
	src AgentSource

	started                       *prometheus.Desc
	networks, healthy             *prometheus.Desc
	endpoints, addresses          *prometheus.Desc
	sandboxes, conflicts          *prometheus.Desc
	reconciles, reconcileErrors   *prometheus.Desc
	reconcileLast, reconcileSince *prometheus.Desc
}

func newAgentCollector(src AgentSource) *agentCollector {
	netLabels := []string{"network", "driver"}
	return &agentCollector{
		src: src,
		started: prometheus.NewDesc("fabric_agent_start_time_seconds",
			"When the agent started, in seconds since the Unix epoch.", nil, nil),
		networks: prometheus.NewDesc("fabric_networks",
			"Networks on this host.", nil, nil),
		healthy: prometheus.NewDesc("fabric_network_healthy",
			"1 if the network works, 0 while it cannot (for example its macvlan parent is missing).", netLabels, nil),
		endpoints: prometheus.NewDesc("fabric_endpoints",
			"Endpoints on this host, by network.", netLabels, nil),
		addresses: prometheus.NewDesc("fabric_ipam_addresses",
			"Addresses of the network's dynamic pool on this host, used or free; used/(used+free) is how full it is.",
			[]string{"network", "state"}, nil),
		conflicts: prometheus.NewDesc("fabric_overlay_address_conflicts",
			"Endpoints on this host whose overlay address another node also uses and holds (lost after a partition); they keep running, cut off from other hosts.",
			[]string{"network"}, nil),
		sandboxes: prometheus.NewDesc("fabric_sandboxes",
			"Sandboxes on this host.", nil, nil),
		reconciles: prometheus.NewDesc("fabric_reconciles_total",
			"Runs that made the kernel match the stored records.", nil, nil),
		reconcileErrors: prometheus.NewDesc("fabric_reconcile_errors_total",
			"Reconcile runs that failed.", nil, nil),
		reconcileLast: prometheus.NewDesc("fabric_reconcile_last_duration_seconds",
			"How long the last reconcile run took, failed or not.", nil, nil),
		reconcileSince: prometheus.NewDesc("fabric_reconcile_last_success_timestamp_seconds",
			"When a reconcile run last succeeded, in seconds since the Unix epoch.", nil, nil),
	}
}

func (c *agentCollector) Describe(ch chan<- *prometheus.Desc) {
	describeAll(ch, c.started, c.networks, c.healthy, c.endpoints, c.addresses,
		c.sandboxes, c.conflicts, c.reconciles, c.reconcileErrors, c.reconcileLast, c.reconcileSince)
}

func (c *agentCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.AgentMetrics()
	if !s.Started.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.started, prometheus.GaugeValue, unixSeconds(s.Started))
	}
	ch <- prometheus.MustNewConstMetric(c.networks, prometheus.GaugeValue, float64(len(s.Networks)))
	for _, n := range s.Networks {
		healthy := 1.0
		if n.Unhealthy {
			healthy = 0
		}
		ch <- prometheus.MustNewConstMetric(c.healthy, prometheus.GaugeValue, healthy, n.Name, n.Driver)
		ch <- prometheus.MustNewConstMetric(c.endpoints, prometheus.GaugeValue, float64(n.Endpoints), n.Name, n.Driver)
		ch <- prometheus.MustNewConstMetric(c.addresses, prometheus.GaugeValue, float64(n.IPsUsed), n.Name, "used")
		ch <- prometheus.MustNewConstMetric(c.addresses, prometheus.GaugeValue, float64(n.IPsFree), n.Name, "free")
		if n.Driver == "overlay" {
			ch <- prometheus.MustNewConstMetric(c.conflicts, prometheus.GaugeValue, float64(n.AddressConflicts), n.Name)
		}
	}
	ch <- prometheus.MustNewConstMetric(c.sandboxes, prometheus.GaugeValue, float64(s.Sandboxes))
	r := s.Reconcile
	ch <- prometheus.MustNewConstMetric(c.reconciles, prometheus.CounterValue, float64(r.Runs))
	ch <- prometheus.MustNewConstMetric(c.reconcileErrors, prometheus.CounterValue, float64(r.Errors))
	if r.Runs > 0 {
		ch <- prometheus.MustNewConstMetric(c.reconcileLast, prometheus.GaugeValue, r.LastDuration.Seconds())
	}
	if !r.LastSuccess.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.reconcileSince, prometheus.GaugeValue, unixSeconds(r.LastSuccess))
	}
}
