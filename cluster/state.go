package cluster

import (
	"math"
	"net/netip"
	"slices"
	"time"
)

// state is the replicated state machine plus the node-local bookkeeping
// that goes with it. It is not safe for concurrent use: Cluster holds its
// mutex around every call. Methods never block and never call memberlist;
// what must be broadcast is collected in out and sent after the lock is
// released.
//
// Merge rules (the same for a gossiped record, a push/pull and a Restore,
// so the order in which records arrive does not matter):
//   - networks: a two-phase set keyed by NetworkID; a tombstone beats a live
//     record, the lower tombstone version beats a higher one;
//   - endpoints, leases, claims: per key, the higher (clock, writer) wins.
type state struct {
	self    string
	clock   uint64 // lamport clock
	version uint64 // bumped on every change, for Snapshot consumers
	now     func() time.Time
	emit    func(Event)

	networks  map[NetworkID]*netEntry
	accepted  map[string]NetworkID // name → the accepted create
	endpoints map[string]*epEntry
	leases    map[leaseKey]*leaseEntry
	claims    map[claimKey]*claimEntry

	// Local only, never gossiped.
	allocs    map[claimKey]string // addresses this node handed out, → owner
	pending   map[resKey]*pendingClaim
	promises  map[resKey]promise
	published map[string]Endpoint // what the agent asked this node to publish
	synced    bool                // SyncEndpoints was called: own records not in published are stale
	missing   map[string]time.Time

	out []record

	// Bounds (limits.go): records per (kind, owner), the number of
	// endpoint, lease and claim records, and the encoded size of all.
	owned map[ownerCount]int
	total int
	bytes int
	// sign signs a local write (identity.go); nil leaves it unsigned.
	sign func(*record)
	// rejected counts remote records dropped, by reason.
	rejected func(reason string)
}

type netEntry struct {
	rec       netRecord
	deletedAt time.Time
}

type epEntry struct {
	rec       epRecord
	deletedAt time.Time
}

type leaseEntry struct {
	rec       leaseRecord
	deletedAt time.Time
}

type claimEntry struct {
	rec       claimRecord
	deletedAt time.Time
}

type leaseKey struct {
	Net   NetworkID
	Block netip.Prefix
}

type claimKey struct {
	Net NetworkID
	IP  netip.Addr
}

func newState(self string, emit func(Event)) *state {
	return &state{
		self:      self,
		now:       time.Now,
		emit:      emit,
		networks:  make(map[NetworkID]*netEntry),
		accepted:  make(map[string]NetworkID),
		endpoints: make(map[string]*epEntry),
		leases:    make(map[leaseKey]*leaseEntry),
		claims:    make(map[claimKey]*claimEntry),
		allocs:    make(map[claimKey]string),
		pending:   make(map[resKey]*pendingClaim),
		promises:  make(map[resKey]promise),
		published: make(map[string]Endpoint),
		missing:   make(map[string]time.Time),
		owned:     make(map[ownerCount]int),
		rejected:  func(string) {},
	}
}

// tick returns the version of a local write. It saturates rather than
// wrap (limits.go bounds how fast the clock can move).
func (s *state) tick() version {
	if s.clock < math.MaxUint64 {
		s.clock++
	}
	return version{Clock: s.clock, Node: s.self}
}

// witness moves the clock past a version seen from elsewhere, so the next
// local write orders after everything this node has seen. Remote clocks
// are bounded before they get here (admit).
func (s *state) witness(c uint64) {
	if c > s.clock {
		s.clock = c
	}
}

func (s *state) takeOut() []record {
	out := s.out
	s.out = nil
	return out
}

// apply writes a local change: it signs r and merges it. A change is
// queued for broadcast.
func (s *state) apply(r record) bool {
	if s.sign != nil && r.writer() == s.self {
		s.sign(&r)
	}
	return s.applyFrom(r, true)
}

func (s *state) applyNet(r netRecord) bool {
	r.Net = r.Net.clone()
	cur := s.networks[r.Net.ID]
	switch {
	case cur == nil:
		s.networks[r.Net.ID] = &netEntry{rec: r}
		s.account(record{net: &r}, 1)
		if r.Deleted {
			s.networks[r.Net.ID].deletedAt = s.now()
			s.purgeNetwork(r.Net.ID)
			return true
		}
	case !cur.rec.Deleted && r.Deleted:
		s.account(record{net: &cur.rec}, -1)
		cur.rec = r // as signed by its writer
		s.account(record{net: &cur.rec}, 1)
		s.markDeleted(cur, r.DelVer, r.Reason, r.Winner)
	case cur.rec.Deleted && r.Deleted && r.DelVer.less(cur.rec.DelVer):
		// Keep the first tombstone so every node reports the same reason.
		s.account(record{net: &cur.rec}, -1)
		cur.rec = r
		s.account(record{net: &cur.rec}, 1)
		return true
	default:
		return false
	}
	s.recompute()
	return true
}

func (s *state) markDeleted(e *netEntry, ver version, reason delReason, winner NetworkID) {
	e.rec.Deleted, e.rec.DelVer, e.rec.Reason, e.rec.Winner = true, ver, reason, winner
	e.deletedAt = s.now()
	s.purgeNetwork(e.rec.Net.ID)
	if reason == reasonConflict && e.rec.Net.ID.Node == s.self {
		why := "conflict"
		if w := s.networks[winner]; w != nil {
			why = e.rec.Net.clashes(&w.rec.Net.NetworkSpec)
		}
		s.emit(Event{Type: EventNetworkConflict, Network: e.rec.Net.clone(),
			Conflict: &NetworkConflict{Lost: e.rec.Net.clone(), Winner: winner, Reason: why}})
	}
}

// recompute derives the accepted networks from the live creates: in
// ascending ID order, a create is accepted unless it clashes with one
// accepted before it. This is a function of the set of records only, so
// every node that holds the same records accepts the same networks,
// whatever order they arrived in. The origin of a create that loses
// tombstones it (and is told): its loss is then final, even if the winner
// is removed later, and the tombstone spreads like any record.
func (s *state) recompute() {
	live := make([]*netEntry, 0, len(s.networks))
	for _, e := range s.networks {
		if !e.rec.Deleted {
			live = append(live, e)
		}
	}
	slices.SortFunc(live, func(a, b *netEntry) int {
		if a.rec.Net.ID == b.rec.Net.ID {
			return 0
		}
		if a.rec.Net.ID.less(b.rec.Net.ID) {
			return -1
		}
		return 1
	})
	accepted := make(map[string]NetworkID, len(live))
	var acc []*netEntry
	for _, e := range live {
		var winner *netEntry
		for _, a := range acc {
			if e.rec.Net.clashes(&a.rec.Net.NetworkSpec) != "" {
				winner = a
				break
			}
		}
		if winner != nil {
			if e.rec.Net.ID.Node == s.self {
				s.account(record{net: &e.rec}, -1)
				s.markDeleted(e, s.tick(), reasonConflict, winner.rec.Net.ID)
				e.rec.Sig = nil
				if s.sign != nil {
					s.sign(&record{net: &e.rec})
				}
				s.account(record{net: &e.rec}, 1)
				s.out = append(s.out, record{net: &netRecord{Net: e.rec.Net.clone(), Deleted: true,
					DelVer: e.rec.DelVer, Reason: e.rec.Reason, Winner: e.rec.Winner, Sig: e.rec.Sig}})
			}
			continue
		}
		acc = append(acc, e)
		accepted[e.rec.Net.Name] = e.rec.Net.ID
	}
	for name, id := range s.accepted {
		if accepted[name] != id {
			s.emit(Event{Type: EventNetworkRemoved, Network: s.networks[id].rec.Net.clone()})
		}
	}
	for _, e := range acc {
		if s.accepted[e.rec.Net.Name] != e.rec.Net.ID {
			s.emit(Event{Type: EventNetworkAdded, Network: e.rec.Net.clone()})
		}
	}
	s.accepted = accepted
}

// purgeNetwork forgets the leases, claims and allocations of a removed
// network. Its tombstone keeps late lease records from coming back.
func (s *state) purgeNetwork(id NetworkID) {
	for k, e := range s.leases {
		if k.Net == id {
			s.account(record{lease: &e.rec}, -1)
			delete(s.leases, k)
		}
	}
	for k, e := range s.claims {
		if k.Net == id {
			s.account(record{claim: &e.rec}, -1)
			delete(s.claims, k)
		}
	}
	for k := range s.allocs {
		if k.Net == id {
			delete(s.allocs, k)
		}
	}
	for k, p := range s.pending {
		if k.Net == id {
			p.aborted = true
		}
	}
}

func (s *state) applyEndpoint(r epRecord) bool {
	r.EP = r.EP.clone()
	cur := s.endpoints[r.EP.ID]
	if cur != nil && !cur.rec.Ver.less(r.Ver) {
		return false
	}
	e := &epEntry{rec: r}
	if r.Deleted {
		e.deletedAt = s.now()
	}
	if cur != nil {
		s.account(record{ep: &cur.rec}, -1)
	}
	s.endpoints[r.EP.ID] = e
	s.account(record{ep: &e.rec}, 1)
	wasLive := cur != nil && !cur.rec.Deleted
	switch {
	case !wasLive && !r.Deleted:
		s.emit(Event{Type: EventEndpointAdded, Endpoint: r.EP.clone()})
	case wasLive && !r.Deleted && !cur.rec.EP.equal(r.EP):
		s.emit(Event{Type: EventEndpointUpdated, Endpoint: r.EP.clone()})
	case wasLive && r.Deleted:
		s.emit(Event{Type: EventEndpointRemoved, Endpoint: cur.rec.EP.clone()})
	}
	if r.EP.Node == s.self {
		s.assertOwnEndpoint(r)
	}
	return true
}

// assertOwnEndpoint keeps the owner authoritative for its own endpoints:
// one that another node reaped while this node was unreachable comes back,
// and after SyncEndpoints one the agent no longer has is removed.
func (s *state) assertOwnEndpoint(r epRecord) {
	pub, published := s.published[r.EP.ID]
	switch {
	case r.Deleted && r.Ver.Node != s.self && published:
		s.writeEndpoint(pub, false)
	case !r.Deleted && s.synced && !published:
		s.writeEndpoint(r.EP, true)
	}
}

// writeEndpoint records a local change of an own endpoint.
func (s *state) writeEndpoint(ep Endpoint, deleted bool) {
	s.apply(record{ep: &epRecord{Ver: s.tick(), Deleted: deleted, EP: ep.clone()}})
}

func (s *state) applyLease(r leaseRecord) bool {
	k := leaseKey{Net: r.Net, Block: r.Block}
	if n := s.networks[r.Net]; n != nil {
		spec := &n.rec.Net.NetworkSpec
		if n.rec.Deleted || r.Block.Bits() != spec.BlockBits || !spec.Subnet.Contains(r.Block.Addr()) {
			return false
		}
	}
	cur := s.leases[k]
	if cur != nil && !cur.rec.Ver.less(r.Ver) {
		return false
	}
	e := &leaseEntry{rec: r}
	if r.Deleted {
		e.deletedAt = s.now()
	}
	if cur != nil {
		s.account(record{lease: &cur.rec}, -1)
	}
	s.leases[k] = e
	s.account(record{lease: &e.rec}, 1)
	res := resKey{Kind: resBlock, Net: r.Net, P: r.Block}
	if cur != nil && !cur.rec.Deleted && cur.rec.Node == s.self && (r.Deleted && r.Ver.Node != s.self || !r.Deleted && r.Node != s.self) {
		s.emit(Event{Type: EventLeaseLost, Network: s.networkByID(r.Net), Lease: r.Block})
		for a := range s.allocs {
			if a.Net == r.Net && r.Block.Contains(a.IP) {
				delete(s.allocs, a)
			}
		}
	}
	if !r.Deleted {
		s.settleClaim(res, r.Node)
	}
	return true
}

func (s *state) applyClaim(r claimRecord) bool {
	k := claimKey{Net: r.Net, IP: r.IP}
	if n := s.networks[r.Net]; n != nil && (n.rec.Deleted || !n.rec.Net.Subnet.Contains(r.IP)) {
		return false
	}
	cur := s.claims[k]
	if cur != nil && !cur.rec.Ver.less(r.Ver) {
		return false
	}
	e := &claimEntry{rec: r}
	if r.Deleted {
		e.deletedAt = s.now()
	}
	if cur != nil {
		s.account(record{claim: &cur.rec}, -1)
	}
	s.claims[k] = e
	s.account(record{claim: &e.rec}, 1)
	if cur != nil && !cur.rec.Deleted && cur.rec.Node == s.self && (r.Deleted && r.Ver.Node != s.self || !r.Deleted && r.Node != s.self) {
		s.emit(Event{Type: EventLeaseLost, Network: s.networkByID(r.Net), Lease: netip.PrefixFrom(r.IP, 32)})
		delete(s.allocs, k)
	}
	if !r.Deleted {
		s.settleClaim(resKey{Kind: resIP, Net: r.Net, P: netip.PrefixFrom(r.IP, 32)}, r.Node)
	}
	return true
}

// settleClaim drops what a granted claim makes moot: a promise to the
// winner, and this node's own pending claim if someone else got it.
func (s *state) settleClaim(k resKey, holder string) {
	if p, ok := s.promises[k]; ok && p.node == holder {
		delete(s.promises, k)
	}
	if p := s.pending[k]; p != nil && holder != s.self {
		p.aborted = true
	}
}

func (s *state) networkByID(id NetworkID) Network {
	if e := s.networks[id]; e != nil {
		return e.rec.Net.clone()
	}
	return Network{ID: id}
}

// records returns every record, tombstones included, for push/pull and
// snapshots.
func (s *state) records() []record {
	rs := make([]record, 0, len(s.networks)+len(s.endpoints)+len(s.leases)+len(s.claims))
	for _, e := range s.networks {
		r := e.rec
		rs = append(rs, record{net: &r})
	}
	for _, e := range s.endpoints {
		r := e.rec
		rs = append(rs, record{ep: &r})
	}
	for _, e := range s.leases {
		r := e.rec
		rs = append(rs, record{lease: &r})
	}
	for _, e := range s.claims {
		r := e.rec
		rs = append(rs, record{claim: &r})
	}
	return rs
}

// merge applies a full remote state; auth[i] is what the signature check
// of rs[i] found (nil: not checked). The sender's clock is witnessed only
// within the bound of limits.go; each record is checked on its own.
func (s *state) merge(clock uint64, rs []record, auth []authResult) {
	if s.clockOK(record{ep: &epRecord{Ver: version{Clock: clock}}}) {
		s.witness(clock)
	} else {
		s.rejected(dropClock)
	}
	at := func(i int) authResult {
		if auth == nil {
			return authNone
		}
		return auth[i]
	}
	// Networks first, so leases and claims can be checked against them.
	for i, r := range rs {
		if r.net != nil {
			s.remote(r, false, at(i))
		}
	}
	for i, r := range rs {
		if r.net == nil {
			s.remote(r, false, at(i))
		}
	}
}

// gc forgets tombstones older than ttl. A record that arrives after its
// tombstone is gone can come back; the ttl is long (a day by default) so
// that only a node offline for longer than that can bring one back.
func (s *state) gc(ttl time.Duration) {
	cut := s.now().Add(-ttl)
	for k, e := range s.networks {
		if e.rec.Deleted && e.deletedAt.Before(cut) {
			s.account(record{net: &e.rec}, -1)
			delete(s.networks, k)
		}
	}
	for k, e := range s.endpoints {
		if e.rec.Deleted && e.deletedAt.Before(cut) {
			s.account(record{ep: &e.rec}, -1)
			delete(s.endpoints, k)
		}
	}
	for k, e := range s.leases {
		if e.rec.Deleted && e.deletedAt.Before(cut) {
			s.account(record{lease: &e.rec}, -1)
			delete(s.leases, k)
		}
	}
	for k, e := range s.claims {
		if e.rec.Deleted && e.deletedAt.Before(cut) {
			s.account(record{claim: &e.rec}, -1)
			delete(s.claims, k)
		}
	}
}

// observeMembers records since when each node that owns records has not
// been alive.
func (s *state) observeMembers(alive func(string) bool) {
	now := s.now()
	owners := make(map[string]bool)
	for _, e := range s.endpoints {
		if !e.rec.Deleted {
			owners[e.rec.EP.Node] = true
		}
	}
	for _, e := range s.leases {
		if !e.rec.Deleted {
			owners[e.rec.Node] = true
		}
	}
	for _, e := range s.claims {
		if !e.rec.Deleted {
			owners[e.rec.Node] = true
		}
	}
	delete(owners, s.self)
	for n := range s.missing {
		if !owners[n] || alive(n) {
			delete(s.missing, n)
		}
	}
	for n := range owners {
		if _, ok := s.missing[n]; !ok && !alive(n) {
			s.missing[n] = now
		}
	}
}

// reap tombstones the endpoints of nodes missing for longer than
// endpointsAfter and the leases and claims of nodes missing for longer than
// leasesAfter, so the blocks can be leased again.
func (s *state) reap(endpointsAfter, leasesAfter time.Duration) {
	now := s.now()
	gone := func(node string, after time.Duration) bool {
		since, ok := s.missing[node]
		return ok && now.Sub(since) >= after
	}
	for _, e := range s.endpoints {
		if !e.rec.Deleted && gone(e.rec.EP.Node, endpointsAfter) {
			s.apply(record{ep: &epRecord{Ver: s.tick(), Deleted: true, EP: e.rec.EP.clone()}})
		}
	}
	for _, e := range s.leases {
		if !e.rec.Deleted && gone(e.rec.Node, leasesAfter) {
			r := e.rec
			r.Ver, r.Deleted = s.tick(), true
			s.apply(record{lease: &r})
		}
	}
	for _, e := range s.claims {
		if !e.rec.Deleted && gone(e.rec.Node, leasesAfter) {
			r := e.rec
			r.Ver, r.Deleted = s.tick(), true
			s.apply(record{claim: &r})
		}
	}
}
