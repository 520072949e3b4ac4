// Package metrics exports fabric's state to Prometheus. Collectors read it at
// scrape time through small interfaces this package defines (Sources): BPF
// counter maps, the agent's records, the cluster's membership and the DNS
// server's counters are already counted where they live, so copying them
// into Prometheus objects on a timer would only add lag and a goroutine.
// Only API requests, which are events rather than state, are instrumented as
// they happen (APIMetrics).
//
// The package must know nothing of the agent, of a datapath implementation,
// of memberlist or of the DNS server: the agent adapts each of them to a
// source with plain snapshot structs. A nil source leaves its families out.
//
// Wiring, in fabricd:
//
//	api := metrics.NewAPIMetrics()           // the agent wraps its mux: api.WrapMux(mux)
//	reg := metrics.NewRegistry(version, datapathName, metrics.Sources{
//		Datapath: dp, Agent: a, Cluster: c, DNS: d, API: api,
//	})
//	ln, err := net.Listen("tcp", cfg.MetricsListen)
//	...
//	go metrics.Serve(ctx, ln, metrics.Handler(reg, log))
//
// # Metrics
//
// Labels in braces. Counters end in _total; times are seconds, timestamps
// seconds since the Unix epoch.
//
// Build (always):
//
//	fabric_build_info{version,go_version,datapath}   gauge, always 1
//
// Datapath (Sources.Datapath):
//
//	fabric_datapath_packets_total{direction,verdict,reason}  counter
//	fabric_datapath_bytes_total{direction,verdict,reason}    counter (not for direction="socket": the
//	                                               cgroup socket hooks count connections and datagrams, not bytes)
//	fabric_conntrack_entries                       gauge (only if the datapath has a table)
//	fabric_conntrack_capacity                      gauge (likewise)
//	fabric_conntrack_evictions_total               counter (likewise; entries evicted from a full table)
//	fabric_nat_allocation_failures_total           counter
//	fabric_datapath_map_full_total{map}            counter (0 from the start for every map that can fill)
//	fabric_conntrack_quota_drops_total             counter (new connections of a source over its quota of unanswered ones)
//	fabric_overlay_remotes_skipped_total{reason}   counter (unusable remote endpoints left out)
//	fabric_datapath_programs_attached{hook}        gauge
//	fabric_datapath_read_errors_total              counter, scrapes whose read failed
//
// The label values are the bpf package's names (direction "from-endpoint",
// verdict "drop", reason "cross-network", ...). There is no separate drops
// metric: drops are the packets with verdict="drop", so
//
//	sum by (reason) (rate(fabric_datapath_packets_total{verdict="drop"}[5m]))
//
// gives drops/s by reason without a second copy of the same counters.
//
// Agent (Sources.Agent):
//
//	fabric_agent_start_time_seconds                gauge
//	fabric_networks                                gauge
//	fabric_network_healthy{network,driver}         gauge, 1 or 0
//	fabric_endpoints{network,driver}               gauge
//	fabric_ipam_addresses{network,state}           gauge, state "used" or "free"
//	fabric_sandboxes                               gauge
//	fabric_overlay_address_conflicts{network}      gauge, endpoints here that lost their overlay address
//	fabric_reconciles_total                        counter
//	fabric_reconcile_errors_total                  counter
//	fabric_reconcile_last_duration_seconds         gauge
//	fabric_reconcile_last_success_timestamp_seconds gauge
//
// API (Sources.API):
//
//	fabric_api_requests_total{method,route,code}   counter
//	fabric_api_request_duration_seconds{method,route} histogram
//
// Cluster (Sources.Cluster):
//
//	fabric_cluster_members{state}                  gauge, state alive|suspect|dead|left
//	fabric_gossip_messages_total{direction}        counter, direction sent|received
//	fabric_gossip_send_errors_total                counter
//	fabric_gossip_dropped_total{reason}            counter
//	fabric_cluster_events_dropped_total            counter
//	fabric_cluster_health_score                    gauge, 0 is healthy
//	fabric_cluster_leases                          gauge, address blocks held
//	fabric_cluster_last_full_sync_timestamp_seconds gauge
//
// DNS (Sources.DNS):
//
//	fabric_dns_queries_total{result}               counter, result local|nxdomain|forwarded|forward_failed|refused|malformed
//	fabric_dns_inflight_rejected_total             counter
//	fabric_dns_resolvers                           gauge
//	fabric_dns_records                             gauge
//	fabric_dns_upstreams                           gauge
//	fabric_dns_inflight_queries                    gauge
//	fabric_dns_upstream_latency_seconds            histogram
//
// Plus the Go runtime (go_*) and process (process_*) collectors. The alert
// rules and the Grafana dashboard in deploy/ use these names; a test fails
// when one of them names a metric this package does not export.
package metrics
