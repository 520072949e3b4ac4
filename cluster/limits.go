package cluster

import (
	"math"
)

// Bounds on what the replicated state accepts from others. Without them
// one member (or anyone, with --cluster-insecure) could poison the lamport
// clock, or grow the state until push/pull and snapshots no longer fit.
//
//   - Clocks: a record whose clock is more than maxClockAhead ahead of
//     this node's clock is dropped. A legitimate clock only moves by one per
//     write and by witnessing others, so no honest member is ever 2^32
//     writes ahead; and since one record can move the clock by at most
//     2^32, wrapping it would take 2^32 poisoned records. tick saturates at
//     MaxUint64 rather than wrap (and then writes lose to everything).
//   - Caps: per node, at most maxEndpointsPerNode endpoint records,
//     maxLeasesPerNode leases and maxClaimsPerNode claims (tombstones
//     included); in all, maxTotalRecords of those and maxNetworks network
//     records; and the records' encoded size stays under stateBudget, so
//     the whole state always fits a push/pull (maxStateBytes). Records over
//     a cap are dropped and counted; local writes over a cap still happen
//     (the agent has its own limits) but are counted.
//   - Endpoints, leases and claims of a network this node does not know
//     are dropped: they cannot be checked, and their network's create
//     arrives first in a push/pull (merge applies networks first), so only
//     a gossiped record that overtook its network is lost, to be repaired
//     by the next push/pull.
const (
	maxClockAhead       = 1 << 32
	maxEndpointsPerNode = 4096
	maxLeasesPerNode    = 1024
	maxClaimsPerNode    = 4096
	maxTotalRecords     = 1 << 16
	maxNetworks         = 1024
	stateBudget         = maxStateBytes * 3 / 4
)

// ownerCount is the key of the per-node counts.
type ownerCount struct {
	kind recordKind
	node string
}

// owner is the node a record counts against: the endpoint's, lease's or
// claim's node (whoever wrote it).
func (r record) owner() (recordKind, string) {
	switch {
	case r.ep != nil:
		return kindEndpoint, r.ep.EP.Node
	case r.lease != nil:
		return kindLease, r.lease.Node
	case r.claim != nil:
		return kindClaim, r.claim.Node
	}
	return kindNetwork, ""
}

func perNodeCap(k recordKind) int {
	switch k {
	case kindEndpoint:
		return maxEndpointsPerNode
	case kindLease:
		return maxLeasesPerNode
	case kindClaim:
		return maxClaimsPerNode
	}
	return maxNetworks
}

// recordSize is a record's encoded size, what it adds to a push/pull.
func recordSize(r record) int {
	e := encoder{buf: make([]byte, 0, 128)}
	e.record(r)
	return len(e.buf)
}

// clockOK reports whether every clock of r is at most maxClockAhead ahead
// of this node's, without overflowing.
func (s *state) clockOK(r record) bool {
	limit := uint64(math.MaxUint64)
	if s.clock <= math.MaxUint64-maxClockAhead {
		limit = s.clock + maxClockAhead
	}
	for _, c := range r.clocks() {
		if c > limit {
			return false
		}
	}
	return true
}

// admit checks a remote record against the bounds above and the state it
// would change; it returns the drop reason, or "" to apply it.
func (s *state) admit(r record) string {
	if !s.clockOK(r) {
		return dropClock
	}
	switch {
	case r.ep != nil:
		if id, ok := s.accepted[r.ep.EP.Network]; !ok || s.networks[id].rec.Deleted {
			if s.endpoints[r.ep.EP.ID] == nil || !r.ep.Deleted {
				return dropUnknownNet
			}
		}
	case r.lease != nil:
		if s.networks[r.lease.Net] == nil {
			return dropUnknownNet
		}
	case r.claim != nil:
		if s.networks[r.claim.Net] == nil {
			return dropUnknownNet
		}
	}
	if r.net == nil && s.isNewKey(r) {
		kind, node := r.owner()
		if s.owned[ownerCount{kind, node}] >= perNodeCap(kind) || s.total >= maxTotalRecords {
			return dropLimit
		}
	}
	if r.net != nil && s.networks[r.net.Net.ID] == nil && len(s.networks) >= maxNetworks {
		return dropLimit
	}
	if s.isNewKey(r) && s.bytes+recordSize(r) > stateBudget {
		return dropLimit
	}
	return ""
}

// isNewKey reports whether r is about a key the state does not hold yet.
func (s *state) isNewKey(r record) bool {
	switch {
	case r.net != nil:
		return s.networks[r.net.Net.ID] == nil
	case r.ep != nil:
		return s.endpoints[r.ep.EP.ID] == nil
	case r.lease != nil:
		return s.leases[leaseKey{Net: r.lease.Net, Block: r.lease.Block}] == nil
	case r.claim != nil:
		return s.claims[claimKey{Net: r.claim.Net, IP: r.claim.IP}] == nil
	}
	return false
}

// account adds (delta +1) or removes (-1) a stored record to or from the
// counts the caps are checked against.
func (s *state) account(r record, delta int) {
	if r.net == nil {
		kind, node := r.owner()
		k := ownerCount{kind, node}
		s.owned[k] += delta
		if s.owned[k] <= 0 {
			delete(s.owned, k)
		}
		s.total += delta
	}
	s.bytes += delta * recordSize(r)
}

// newer reports whether r could change the state: the cheap test that
// decides which records of a push/pull are worth verifying.
func (s *state) newer(r record) bool {
	switch {
	case r.net != nil:
		cur := s.networks[r.net.Net.ID]
		return cur == nil || r.net.Deleted && (!cur.rec.Deleted || r.net.DelVer.less(cur.rec.DelVer))
	case r.ep != nil:
		cur := s.endpoints[r.ep.EP.ID]
		return cur == nil || cur.rec.Ver.less(r.ep.Ver)
	case r.lease != nil:
		cur := s.leases[leaseKey{Net: r.lease.Net, Block: r.lease.Block}]
		return cur == nil || cur.rec.Ver.less(r.lease.Ver)
	case r.claim != nil:
		cur := s.claims[claimKey{Net: r.claim.Net, IP: r.claim.IP}]
		return cur == nil || cur.rec.Ver.less(r.claim.Ver)
	}
	return false
}
