package cluster

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/hashicorp/memberlist"
)

// The hostile tests replay the gossip attacks of issue 14 against a
// keyed 3-member cluster, from three kinds of sender: a stranger without
// the key, a non-member with the key, and a member that signs in another
// member's name. Each asserts that the cluster's state is unchanged and
// that the target counted the drop under the expected reason.

// clusterView is what a member knows, to compare before and after.
func clusterView(c *Cluster) string {
	var b strings.Builder
	for _, n := range c.Networks() {
		fmt.Fprintf(&b, "net %s %s %s %d\n", n.Name, n.ID, n.Subnet, n.VNI)
		for _, l := range c.Leases(n.Name) {
			fmt.Fprintf(&b, "  lease %s %s\n", l.Block, l.Node)
		}
		for _, cl := range c.Claims(n.Name) {
			fmt.Fprintf(&b, "  claim %s %s %s\n", cl.IP, cl.Node, cl.Owner)
		}
	}
	for _, ep := range c.Endpoints("") {
		fmt.Fprintf(&b, "ep %s %s %s %s\n", ep.ID, ep.Network, ep.Node, ep.IP)
	}
	c.mu.Lock()
	fmt.Fprintf(&b, "clock<2^32 %v promises %d\n", c.st.clock < 1<<32, len(c.st.promises))
	c.mu.Unlock()
	c.memMu.Lock()
	leaving := make([]string, 0, len(c.leaving))
	for n := range c.leaving {
		leaving = append(leaving, n)
	}
	c.memMu.Unlock()
	slices.Sort(leaving)
	fmt.Fprintf(&b, "leaving %v\n", leaving)
	return b.String()
}

func nodeOf(c *Cluster) memberlist.Node {
	return memberlist.Node{Name: c.Name(), Addr: c.Addr().Addr().AsSlice(), Port: c.Addr().Port()}
}

// hostileSetup is a keyed cluster with some state and the attackers.
type hostileSetup struct {
	members  []*Cluster
	prod     Network
	insider  *Cluster // a member with the key
	outsider *Cluster // the key, never joined
	stranger *Cluster // no key
}

func newHostileSetup(t *testing.T) *hostileSetup {
	key := newKey(t)
	withKey := func(cfg *Config) { cfg.SecretKeys = [][]byte{key} }
	h := &hostileSetup{members: startCluster(t, 3, withKey)}
	// prod is created on node-1, so a forged create in node-0's name with
	// clock 1 orders before it and would win the clash.
	h.prod = mustCreate(t, h.members[1], "prod", "10.60.0.0/16")
	waitNetwork(t, h.members, "prod", true)
	ctx := timeoutCtx(t, 20*time.Second)
	ip, err := h.members[1].AllocateIP(ctx, "prod", "web")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.members[1].Publish(Endpoint{ID: "web", Network: "prod", IP: ip, Name: "web"}); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 10*time.Second, "endpoint everywhere", func() bool {
		for _, c := range h.members {
			if _, err := c.Endpoint("web"); err != nil {
				return false
			}
		}
		return true
	})

	cfg := testConfig("node-9")
	withKey(&cfg)
	h.insider = startMember(t, cfg)
	if _, err := h.insider.Join(context.Background(), h.members[0].Addr().String()); err != nil {
		t.Fatal(err)
	}
	all := append(slices.Clone(h.members), h.insider)
	netnstest.Eventually(t, 10*time.Second, "insider joined", func() bool { return allSee(all, 4) })
	waitNetwork(t, all, "prod", true)

	cfg = testConfig("outsider")
	withKey(&cfg)
	h.outsider = startMember(t, cfg)
	h.stranger = startMember(t, testConfig("stranger"))
	return h
}

// forgedRecord is a record "written by" node, signed by signer.
func forgedRecord(signer *Cluster, r record) []byte {
	signer.signRecord(&r)
	return encodeMessage(message{Type: msgRecord, Record: &r})
}

func forgedSigned(signer *Cluster, m message) []byte { return signer.sign(encodeMessage(m)) }

// attack is one forged message, made by from, and the drop reason it
// must be counted under by a member with the key (a stranger's message
// never decrypts: undecryptable).
type attack struct {
	name string
	msg  func(from *Cluster) []byte
	// want is the drop reason with the key; a stranger's message never
	// decrypts (undecryptable).
	want string
}

// hostileFreeIP is an address of prod that forged requests name.
var hostileFreeIP = netip.MustParseAddr("10.60.200.7")

// hostileAttacks are the forgeries TestHostileGossip sends: attacks in a
// member's name or against the cluster's rules, and ownName, what only a
// non-member says in its own name (dropped for that alone).
func hostileAttacks(h *hostileSetup) (attacks, ownName []attack) {
	victim := h.members[0].Name() // the member the forgeries name
	otherSpec := NetworkSpec{Name: "prod", Subnet: netip.MustParsePrefix("10.61.0.0/16"), VNI: 777}
	_ = otherSpec.normalize()
	freeIP := hostileFreeIP
	attacks = []attack{
		{"network in a member's name replacing prod", func(from *Cluster) []byte {
			return forgedRecord(from, record{net: &netRecord{Net: Network{ID: NetworkID{Clock: 1, Node: victim}, NetworkSpec: otherSpec}}})
		}, dropBadSignature},
		{"network (1, \" \") replacing prod", func(from *Cluster) []byte {
			return forgedRecord(from, record{net: &netRecord{Net: Network{ID: NetworkID{Clock: 1, Node: " "}, NetworkSpec: otherSpec}}})
		}, dropDisplace},
		{"tombstone of prod in a member's name", func(from *Cluster) []byte {
			return forgedRecord(from, record{net: &netRecord{Net: h.prod, Deleted: true, DelVer: version{Clock: 1 << 20, Node: victim}, Reason: reasonRemoved}})
		}, dropBadSignature},
		{"0.0.0.0/0 overlay", func(from *Cluster) []byte {
			spec := NetworkSpec{Name: "all", Subnet: netip.MustParsePrefix("0.0.0.0/0"), BlockBits: 24, Gateway: netip.MustParseAddr("0.0.0.1"), VNI: 9}
			return forgedRecord(from, record{net: &netRecord{Net: Network{ID: NetworkID{Clock: 1, Node: from.Name()}, NetworkSpec: spec}}})
		}, dropInvalid},
		{"claim request in a member's name (a promise that blocks ClaimIP)", func(from *Cluster) []byte {
			return forgedSigned(from, message{Type: msgRequest, Request: &request{ID: 1, From: victim, Op: opClaim,
				Res: resKey{Kind: resIP, Net: h.prod.ID, P: netip.PrefixFrom(freeIP, 32)}, Owner: "x"}})
		}, dropBadSignature},
		{"proposal in a member's name", func(from *Cluster) []byte {
			return forgedSigned(from, message{Type: msgRequest, Request: &request{ID: 2, From: victim, Op: opPropose,
				Net: &netRecord{Net: Network{ID: NetworkID{Clock: 1, Node: victim}, NetworkSpec: otherSpec}}}})
		}, dropBadSignature},
		{"key install in a member's name", func(from *Cluster) []byte {
			return forgedSigned(from, message{Type: msgRequest, Request: &request{ID: 3, From: victim, Op: opKeyInstall, Key: make([]byte, 32)}})
		}, dropBadSignature},
		{"vote in a member's name", func(from *Cluster) []byte {
			return forgedSigned(from, message{Type: msgResponse, Response: &response{ID: 4, From: victim, OK: true}})
		}, dropBadSignature},
		{"leave of another member", func(from *Cluster) []byte {
			return forgedSigned(from, message{Type: msgLeave, Leave: &leaveIntent{Node: victim, Stamp: 5}})
		}, dropBadSignature},
		{"endpoint of another member", func(from *Cluster) []byte {
			return forgedRecord(from, record{ep: &epRecord{Ver: version{Clock: 1 << 20, Node: victim},
				EP: Endpoint{ID: "evil", Network: "prod", Node: victim, IP: freeIP}}})
		}, dropBadSignature},
		{"lease of another member", func(from *Cluster) []byte {
			return forgedRecord(from, record{lease: &leaseRecord{Ver: version{Clock: 1 << 20, Node: victim}, Net: h.prod.ID,
				Block: netip.MustParsePrefix("10.60.201.0/24"), Node: victim}})
		}, dropBadSignature},
		{"clock-poisoned endpoint", func(from *Cluster) []byte {
			return forgedRecord(from, record{ep: &epRecord{Ver: version{Clock: math.MaxUint64, Node: from.Name()},
				EP: Endpoint{ID: "tick", Network: "prod", Node: from.Name(), IP: freeIP}}})
		}, dropClock},
		{"endpoint of an unknown network", func(from *Cluster) []byte {
			return forgedRecord(from, record{ep: &epRecord{Ver: version{Clock: 5, Node: from.Name()},
				EP: Endpoint{ID: "stray", Network: "nowhere", Node: from.Name(), IP: freeIP}}})
		}, dropUnknownNet},
	}
	// What a non-member says in its own name is dropped for that alone.
	ownName = []attack{
		{"claim request from a non-member", func(from *Cluster) []byte {
			return forgedSigned(from, message{Type: msgRequest, Request: &request{ID: 6, From: from.Name(), Op: opClaim,
				Res: resKey{Kind: resIP, Net: h.prod.ID, P: netip.PrefixFrom(freeIP, 32)}, Owner: "x"}})
		}, dropNotMember},
		{"leave from a non-member", func(from *Cluster) []byte {
			return forgedSigned(from, message{Type: msgLeave, Leave: &leaveIntent{Node: from.Name(), Stamp: 7}})
		}, dropNotMember},
	}
	return attacks, ownName
}

func TestHostileGossip(t *testing.T) {
	h := newHostileSetup(t)
	target := h.members[2]
	prodSpec := h.prod.NetworkSpec
	freeIP := hostileFreeIP
	attacks, ownName := hostileAttacks(h)

	before := make([]string, len(h.members))
	for i, c := range h.members {
		before[i] = clusterView(c)
	}
	t.Logf("state:\n%s", before[2])
	senders := []struct {
		name    string
		from    *Cluster
		attacks []attack
	}{
		{"stranger without the key", h.stranger, append(slices.Clone(attacks), ownName...)},
		{"non-member with the key", h.outsider, append(slices.Clone(attacks), ownName...)},
		{"member in another's name", h.insider, attacks},
	}
	for _, s := range senders {
		for _, a := range s.attacks {
			want := a.want
			if s.from == h.stranger {
				want = dropUndecryptable
			}
			drops := target.Stats().Dropped[want]
			msg := a.msg(s.from)
			if err := s.from.ml.SendReliable(&memberlist.Node{Name: target.Name(), Addr: target.Addr().Addr().AsSlice(), Port: target.Addr().Port()}, msg); err != nil {
				t.Fatalf("%s: %s: send: %v", s.name, a.name, err)
			}
			if !netnstest.Poll(5*time.Second, func() bool { return target.Stats().Dropped[want] > drops }) {
				t.Errorf("%s: %s: no %q drop counted (drops %v)", s.name, a.name, want, target.Stats().Dropped)
			}
		}
	}
	// Gossip settles; nothing changed anywhere.
	for i, c := range h.members {
		if got := clusterView(c); got != before[i] {
			t.Errorf("%s changed:\nbefore\n%s\nafter\n%s", c.Name(), before[i], got)
		}
	}
	// The address a forged promise would have blocked is still free.
	ctx := timeoutCtx(t, 10*time.Second)
	if err := h.members[1].ClaimIP(ctx, "prod", freeIP, "db"); err != nil {
		t.Errorf("ClaimIP of the address named in forged requests: %v", err)
	}
	if n, err := target.Network("prod"); err != nil || n.NetworkSpec.Subnet != prodSpec.Subnet || n.ID != h.prod.ID {
		t.Errorf("prod is now %+v, %v", n, err)
	}
	t.Logf("target drops: %v", target.Stats().Dropped)
}

// A vote only counts from the member it was asked of, signed by it: with
// one voter silent, forged "yes" votes in its name (even with the right
// request ID) do not make a claim succeed.
func TestForgedVoteDoesNotGrant(t *testing.T) {
	h := newHostileSetup(t)
	claimer, silent := h.members[0], h.members[1]
	_ = silent.Stop() // the others still count it alive for a few seconds: it must vote
	ip := netip.MustParseAddr("10.60.202.9")
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- claimer.claim(ctx, resKey{Kind: resIP, Net: h.prod.ID, P: netip.PrefixFrom(ip, 32)}, "db")
	}()
	// Peek at the request ID (an attacker cannot: it is random) and answer
	// in the silent member's name, from the insider and the outsider.
	var id uint64
	netnstest.Eventually(t, 5*time.Second, "claim in flight", func() bool {
		claimer.rpcMu.Lock()
		defer claimer.rpcMu.Unlock()
		for k := range claimer.rpcs {
			id = k
		}
		return id != 0
	})
	for _, from := range []*Cluster{h.insider, h.outsider} {
		msg := forgedSigned(from, message{Type: msgResponse, Response: &response{ID: id, From: silent.Name(), OK: true}})
		if err := from.ml.SendReliable(ptr(nodeOf(claimer)), msg); err != nil {
			t.Fatal(err)
		}
	}
	err := <-done
	if err == nil {
		t.Fatal("claim granted on forged votes")
	}
	t.Logf("claim: %v; drops %v", err, claimer.Stats().Dropped)
	if claimer.Stats().Dropped[dropBadSignature] < 2 {
		t.Errorf("forged votes not counted: %v", claimer.Stats().Dropped)
	}
}

func ptr[T any](v T) *T { return &v }

// Request IDs are unpredictable.
func TestRequestIDsRandom(t *testing.T) {
	seen := make(map[uint64]bool)
	prev := newRequestID()
	for range 1000 {
		id := newRequestID()
		if seen[id] || id == prev+1 {
			t.Fatalf("request ID %d repeats or follows %d", id, prev)
		}
		seen[id] = true
		prev = id
	}
}

// A 13 MB push/pull is dropped before it is decoded: quickly, without
// holding the state lock, without growing the state.
func TestStateFloodRejectedCheaply(t *testing.T) {
	members := startCluster(t, 1)
	c := members[0]
	mustCreate(t, c, "prod", "10.60.0.0/16")
	before := clusterView(c)
	ver := c.StateVersion()
	// A well-formed state message of 13 MB: a header then endpoint records.
	var recs []record
	for i := 0; len(recs) < 60000; i++ {
		recs = append(recs, record{ep: &epRecord{Ver: version{Clock: 5, Node: "flood"},
			EP: Endpoint{ID: fmt.Sprintf("e%07d", i), Network: "prod", Node: "flood", IP: netip.MustParseAddr("10.60.1.1"),
				Aliases: []string{strings.Repeat("a", 60), strings.Repeat("b", 60)}}}})
	}
	flood := encodeMessage(message{Type: msgState, State: &stateMsg{Clock: 5, Records: recs}})
	if len(flood) < 13e6 {
		t.Fatalf("flood is only %d bytes", len(flood))
	}
	start := time.Now()
	c.mergeRemoteState(flood)
	took := time.Since(start)
	t.Logf("13 MB state dropped in %v", took)
	if took > 50*time.Millisecond {
		t.Errorf("dropping a %d-byte state took %v", len(flood), took)
	}
	if c.Stats().Dropped[dropOversized] == 0 || c.StateVersion() != ver || clusterView(c) != before {
		t.Errorf("flood not dropped as oversized: %v", c.Stats().Dropped)
	}
}

// Under the size limit, the caps still hold: one node's records stop at
// the per-node cap, counted, and the state stays small enough to push.
func TestRecordCaps(t *testing.T) {
	s := newState("me", func(Event) {})
	spec := NetworkSpec{Name: "prod", Subnet: netip.MustParsePrefix("10.0.0.0/8"), VNI: 5}
	if err := spec.normalize(); err != nil {
		t.Fatal(err)
	}
	s.remote(record{net: &netRecord{Net: Network{ID: NetworkID{Clock: 1, Node: "a"}, NetworkSpec: spec}}}, false, authNone)
	var limited int
	s.rejected = func(why string) {
		if why == dropLimit {
			limited++
		}
	}
	for i := range maxEndpointsPerNode + 100 {
		s.remote(record{ep: &epRecord{Ver: version{Clock: 2, Node: "a"},
			EP: Endpoint{ID: fmt.Sprintf("e%d", i), Network: "prod", Node: "a", IP: netip.MustParseAddr("10.0.0.9")}}}, false, authNone)
	}
	if len(s.endpoints) != maxEndpointsPerNode || limited != 100 {
		t.Errorf("%d endpoints kept, %d limited; want %d and 100", len(s.endpoints), limited, maxEndpointsPerNode)
	}
	// Another node still has room; tombstones and gc give the room back.
	if why := s.remote(record{ep: &epRecord{Ver: version{Clock: 2, Node: "b"},
		EP: Endpoint{ID: "b1", Network: "prod", Node: "b", IP: netip.MustParseAddr("10.0.0.8")}}}, false, authNone); why != "" {
		t.Errorf("other node refused: %s", why)
	}
	if s.bytes <= 0 || s.bytes > stateBudget {
		t.Errorf("state bytes %d", s.bytes)
	}
	total := s.total
	s.remote(record{ep: &epRecord{Ver: version{Clock: 3, Node: "b"}, Deleted: true,
		EP: Endpoint{ID: "b1", Network: "prod", Node: "b", IP: netip.MustParseAddr("10.0.0.8")}}}, false, authNone)
	s.now = func() time.Time { return time.Now().Add(48 * time.Hour) }
	s.gc(time.Hour)
	if s.total != total-1 {
		t.Errorf("total %d after gc, want %d", s.total, total-1)
	}
}

// Clocks: a record too far ahead is dropped, one at the bound is fine, a
// push/pull header cannot move the clock past the bound, and tick never
// wraps.
func TestClockBounds(t *testing.T) {
	s := newState("me", func(Event) {})
	spec := NetworkSpec{Name: "prod", Subnet: netip.MustParsePrefix("10.1.0.0/16"), VNI: 5}
	_ = spec.normalize()
	s.remote(record{net: &netRecord{Net: Network{ID: NetworkID{Clock: 10, Node: "a"}, NetworkSpec: spec}}}, false, authNone)
	ep := func(clock uint64, id string) record {
		return record{ep: &epRecord{Ver: version{Clock: clock, Node: "a"}, EP: Endpoint{ID: id, Network: "prod", Node: "a", IP: netip.MustParseAddr("10.1.0.5")}}}
	}
	if why := s.remote(ep(s.clock+maxClockAhead+1, "far"), false, authNone); why != dropClock {
		t.Errorf("record 2^32+1 ahead: %q, want %q", why, dropClock)
	}
	if why := s.remote(ep(math.MaxUint64, "max"), false, authNone); why != dropClock {
		t.Errorf("record at MaxUint64: %q", why)
	}
	at := s.clock + maxClockAhead
	if why := s.remote(ep(at, "near"), false, authNone); why != "" || s.clock != at {
		t.Errorf("record at the bound: %q, clock %d", why, s.clock)
	}
	s.merge(math.MaxUint64, nil, nil)
	if s.clock != at {
		t.Errorf("push/pull header moved the clock to %d", s.clock)
	}
	s.clock = math.MaxUint64
	if v := s.tick(); v.Clock != math.MaxUint64 {
		t.Errorf("tick wrapped to %d", v.Clock)
	}
}

// A snapshot with a poisoned record (saved before the bound existed)
// restores without it.
func TestRestoreDropsPoisonedClock(t *testing.T) {
	spec := NetworkSpec{Name: "prod", Subnet: netip.MustParsePrefix("10.1.0.0/16"), VNI: 5}
	_ = spec.normalize()
	net := record{net: &netRecord{Net: Network{ID: NetworkID{Clock: 3, Node: "node-0"}, NetworkSpec: spec}}}
	bad := record{ep: &epRecord{Ver: version{Clock: math.MaxUint64 - 1, Node: "node-0"},
		EP: Endpoint{ID: "x", Network: "prod", Node: "node-0", IP: netip.MustParseAddr("10.1.0.5")}}}
	members := startCluster(t, 1)
	c := members[0]
	c.signRecord(&net)
	c.signRecord(&bad)
	snap := encodeMessage(message{Type: msgSnapshot, Snapshot: &snapshot{Node: "node-0", Clock: 4, Records: []record{net, bad}}})
	if err := c.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Network("prod"); err != nil {
		t.Errorf("network of the snapshot: %v", err)
	}
	if _, err := c.Endpoint("x"); err == nil || c.StateVersion() > 1<<20 {
		t.Error("poisoned record restored")
	}
	c.mu.Lock()
	clock := c.st.clock
	c.mu.Unlock()
	if clock > 1<<32 {
		t.Errorf("clock %d after restore", clock)
	}
}

// A stranger's raw datagram to the gossip port is counted too.
func TestStrangerDatagramCounted(t *testing.T) {
	key := newKey(t)
	members := startCluster(t, 1, func(cfg *Config) { cfg.SecretKeys = [][]byte{key} })
	c := members[0]
	conn, err := net.Dial("udp", c.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(append([]byte{8}, encodeMessage(sampleMessages()[0])...)); err != nil { // 8: memberlist's user message
		t.Fatal(err)
	}
	netnstest.Eventually(t, 5*time.Second, "undecryptable datagram counted", func() bool { return c.Stats().Dropped[dropUndecryptable] > 0 })
}

// Leave intents are forgotten after a while, so the map cannot grow.
func TestLeaveIntentsExpire(t *testing.T) {
	members := startCluster(t, 2)
	c := members[0]
	c.memMu.Lock()
	c.leaving["gone-long-ago"] = leaveSeen{stamp: 1, at: time.Now().Add(-leaveMemory - time.Minute)}
	c.leaving["just-left"] = leaveSeen{stamp: 2, at: time.Now()}
	c.memMu.Unlock()
	c.maintain()
	c.memMu.Lock()
	defer c.memMu.Unlock()
	if _, ok := c.leaving["gone-long-ago"]; ok {
		t.Error("old leave intent kept")
	}
	if _, ok := c.leaving["just-left"]; !ok {
		t.Error("recent leave intent forgotten")
	}
}
