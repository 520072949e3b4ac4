// Package metrics will hold fabric's Prometheus collectors: BPF counter maps
// read at scrape time and agent state (networks, endpoints, IPAM, cluster).
// It reads state through small interfaces and imports neither the agent nor a
// datapath implementation.
package metrics
