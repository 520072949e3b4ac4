// Package cluster will turn single fabric hosts into one fabric: memberlist
// gossip, node metadata, cluster-scoped networks and address-block leases.
//
// It must know nothing of netlink or eBPF: it produces desired state that the
// agent hands to a datapath. Until the cluster issue lands, every agent runs
// as a single-node fabric.
package cluster
