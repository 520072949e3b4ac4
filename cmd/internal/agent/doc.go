// Package agent is fabricd's core: it keeps the desired state (API requests
// and what the cluster gossips) in the store, hands it to a datapath, runs
// sandbox commands, and serves the HTTP API on a unix socket.
//
// Every change follows the same order: validate everything, write the
// records (phase "creating"), program the kernel with idempotent ensures,
// mark the records ready. A failure rolls back; a crash is rolled back or
// completed by the reconcile at start-up (reconcile.go).
//
// # Who owns what
//
// Each part of the agent's state has one owner and one lock:
//
//   - Agent (agent.go, core.go): networks, sandboxes, endpoints, the
//     networks' address pools (ipam.Pool, which locks itself) and the
//     published ports. Agent.mu serialises every change and is held across
//     store commits and datapath calls; Agent.view guards the maps for
//     status and metrics, which never take Agent.mu (core.go says how).
//     The API's operations on them are in networks.go, drivers.go,
//     endpoints.go, sandboxes.go, extns.go (namespaces wired in by path)
//     and docker_owned.go/owned.go (sandboxes of a CNI runtime or Docker).
//   - health (health.go): warnings that last until the agent stops,
//     unhealthy networks, one-off cluster events, reconcile counts.
//   - dnsRecords (dnsrecords.go): the embedded DNS server's records as the
//     agent last set them, gossiped names refused, resolvers not running.
//     dns.go decides what the records are.
//   - clusterGlue (clusterglue.go): the agent's side of the cluster: the
//     remote endpoints each overlay network was programmed with, node
//     addresses, snapshot save bookkeeping, overlay networks that cannot
//     be set up here, lost address conflicts (conflicts.go), peer probes.
//     cluster.go persists the cluster's snapshot and follows its events;
//     overlaysync.go makes the local overlay networks and remotes follow
//     the cluster; overlaynet.go creates and removes overlay networks;
//     overlay_votes.go votes on addresses before Agent.mu is taken;
//     clusterstatus.go reports the cluster and rotates gossip keys.
//   - processes (process.go, exitwatch.go): sandbox commands and their
//     exits.
//
// health, dnsRecords and clusterGlue hold their locks only for their own
// maps, never across a cluster, datapath or store call, so `fabricctl
// status` (status.go) and a metrics scrape (metrics.go) answer while a
// change or the cluster sync waits on a slow call with Agent.mu held.
//
// # The host
//
// The core asks the host's kernel through Host (host.go): routes a new
// subnet must not overlap, the interfaces a network names, and the named
// namespaces of sandboxes. netlinkHost is the real one; the unit tests use
// a fake and run without root. The datapath (datapath.Datapath) does the
// rest of the kernel work; namespaces wired in by path are opened and
// checked directly (extns.go), and need root to test.
package agent
