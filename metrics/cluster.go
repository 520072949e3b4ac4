package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// clusterCollector exports membership and gossip traffic as this node sees
// them. Every node reports every member, so alerts aggregate over
// instances (max by state) instead of firing once per observer.
type clusterCollector struct {
	src ClusterSource

	members, messages, sendErrors, dropped *prometheus.Desc
	eventsDropped, health, leases, sync    *prometheus.Desc
}

func newClusterCollector(src ClusterSource) *clusterCollector {
	return &clusterCollector{
		src: src,
		members: prometheus.NewDesc("fabric_cluster_members",
			"Cluster members as this node sees them, by state (alive, suspect, failed, left), the words of fabricctl status.", []string{"state"}, nil),
		messages: prometheus.NewDesc("fabric_gossip_messages_total",
			"Gossip messages sent (broadcasts queued and direct messages) and received (decoded and handled).",
			[]string{"direction"}, nil),
		sendErrors: prometheus.NewDesc("fabric_gossip_send_errors_total",
			"Direct gossip messages that could not be delivered.", nil, nil),
		dropped: prometheus.NewDesc("fabric_gossip_dropped_total",
			"Gossip messages received but not applied, by reason.", []string{"reason"}, nil),
		eventsDropped: prometheus.NewDesc("fabric_cluster_events_dropped_total",
			"Cluster events lost because the agent read them too slowly (each loss forces a full resync).", nil, nil),
		health: prometheus.NewDesc("fabric_cluster_health_score",
			"memberlist's awareness score: 0 is healthy; higher means this node answers probes late and is likely the faulty one.",
			nil, nil),
		leases: prometheus.NewDesc("fabric_cluster_leases",
			"Address blocks this node holds.", nil, nil),
		sync: prometheus.NewDesc("fabric_cluster_last_full_sync_timestamp_seconds",
			"When this node last exchanged full state with a peer, in seconds since the Unix epoch.", nil, nil),
	}
}

func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	describeAll(ch, c.members, c.messages, c.sendErrors, c.dropped,
		c.eventsDropped, c.health, c.leases, c.sync)
}

func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.ClusterMetrics()
	// Every state is always exported, zero or not, so that an alert on
	// state="failed" has a series to evaluate from the first scrape.
	// memberlist calls failed members "dead"; fabricctl says "failed", and
	// so do the metrics.
	for _, m := range []struct {
		state string
		n     int
	}{{"alive", s.Members.Alive}, {"suspect", s.Members.Suspect}, {"failed", s.Members.Dead}, {"left", s.Members.Left}} {
		ch <- prometheus.MustNewConstMetric(c.members, prometheus.GaugeValue, float64(m.n), m.state)
	}
	ch <- prometheus.MustNewConstMetric(c.messages, prometheus.CounterValue, float64(s.MessagesSent), "sent")
	ch <- prometheus.MustNewConstMetric(c.messages, prometheus.CounterValue, float64(s.MessagesReceived), "received")
	ch <- prometheus.MustNewConstMetric(c.sendErrors, prometheus.CounterValue, float64(s.SendErrors))
	for reason, n := range s.Dropped {
		ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(n), reason)
	}
	ch <- prometheus.MustNewConstMetric(c.eventsDropped, prometheus.CounterValue, float64(s.EventsDropped))
	ch <- prometheus.MustNewConstMetric(c.health, prometheus.GaugeValue, float64(s.HealthScore))
	ch <- prometheus.MustNewConstMetric(c.leases, prometheus.GaugeValue, float64(s.Leases))
	if !s.LastFullSync.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.sync, prometheus.GaugeValue, unixSeconds(s.LastFullSync))
	}
}
