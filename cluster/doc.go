// Package cluster turns single fabric hosts into one fabric: membership and
// failure detection over hashicorp/memberlist gossip, node metadata, and a
// small replicated state machine for the cluster-scoped state: overlay
// networks, endpoint records and address-block leases.
//
// # What it holds
//
//   - Members: every agent is a memberlist node; its NodeMeta carries the
//     underlay address, tunnel port, datapath and version (meta.go).
//   - Overlay networks: a two-phase set keyed by the create's (lamport clock,
//     origin node). Of all live creates, the accepted networks are picked
//     greedily in ascending (clock, node) order, skipping any that clash with
//     an already accepted one (same name, overlapping subnet or same VNI).
//     That is a function of the set of records alone, so every node that
//     holds the same records accepts the same networks. The origin of a
//     create that loses tombstones it, which makes the loss final, and is
//     told: ErrConflict from CreateNetwork, or EventNetworkConflict when the
//     clash only shows up later (after a partition).
//   - Endpoint records, block leases and static address claims: last writer
//     wins per key, ordered by (lamport clock, writer). Only the owner writes
//     a live record; anyone may tombstone the records of a node that has been
//     gone for longer than a grace period.
//   - Leases: a block or a static address is taken only after every live
//     member has acknowledged the claim over a reliable direct message
//     (leases.go explains the rules and why two nodes cannot both win).
//
// Replication is a broadcast per change through a TransmitLimitedQueue,
// re-broadcast by every node that learns something new, plus memberlist's
// periodic full-state push/pull, which is what brings a node that was down
// or partitioned back up to date. Deletions are tombstones, collected after a
// long grace period, so a late create cannot resurrect a removed network.
//
// # Whom it trusts
//
// Gossip is encrypted and authenticated with the cluster's keys
// (memberlist's keyring; the agent insists on one unless told
// --cluster-insecure), which keeps out everyone without them. Members are
// told apart by an ed25519 identity key each (identity.go): direct
// messages, leave intents and records are signed by the node that wrote
// them, so one member cannot vote, claim, leave or write records in
// another's name, and replies go to memberlist's address of the member.
// Who may write what: a live endpoint, lease or claim only its own node; a
// tombstone of one any member (the reaping of a node gone for good); a
// network create its creator, and a create from a node not known here may
// not displace an accepted network; a network's removal any member (as
// `network rm` works from any host). Clocks and the size of the state are
// bounded (limits.go). Everything refused is counted by reason (Stats).
//
// # What it must not know
//
// The package produces and consumes plain cluster state. It knows nothing of
// netlink, eBPF, the agent's store or its API: the agent persists Snapshot
// bytes, watches Events and hands the desired state to a datapath.
package cluster
