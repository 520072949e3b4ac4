package cluster

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

func TestNetworkReplication(t *testing.T) {
	members := startCluster(t, 3)
	events := watchEvents(t, members[2])
	n := mustCreate(t, members[0], "blue", "10.10.0.0/16")
	if n.BlockBits != 24 || n.Gateway != netip.MustParseAddr("10.10.0.1") || n.VNI < vniBase {
		t.Errorf("defaults: %+v", n)
	}
	waitNetwork(t, members, "blue", true)
	got, _ := members[2].Network("blue")
	if got.ID != n.ID || got.Subnet != n.Subnet || got.VNI != n.VNI {
		t.Errorf("replica %+v, want %+v", got, n)
	}
	netnstest.Eventually(t, 5*time.Second, "network-added event", func() bool {
		_, ok := events.find(func(e Event) bool { return e.Type == EventNetworkAdded && e.Network.Name == "blue" })
		return ok
	})

	// Known clashes are refused at once.
	ctx := context.Background()
	for _, spec := range []NetworkSpec{
		{Name: "blue", Subnet: mustPrefix(t, "10.99.0.0/16")},
		{Name: "green", Subnet: mustPrefix(t, "10.10.128.0/17")},
		{Name: "red", Subnet: mustPrefix(t, "10.11.0.0/16"), VNI: n.VNI},
	} {
		if _, err := members[1].CreateNetwork(ctx, spec); !errors.Is(err, ErrConflict) {
			t.Errorf("create %s %s: %v, want ErrConflict", spec.Name, spec.Subnet, err)
		}
	}
	if _, err := members[1].CreateNetwork(ctx, NetworkSpec{Name: "bad name!", Subnet: mustPrefix(t, "10.12.0.0/16")}); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad name: %v", err)
	}

	if err := members[1].RemoveNetwork("blue"); err != nil {
		t.Fatal(err)
	}
	waitNetwork(t, members, "blue", false)
	if err := members[1].RemoveNetwork("blue"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second remove: %v", err)
	}
	// The name is free again.
	mustCreate(t, members[2], "blue", "10.10.0.0/16")
	waitNetwork(t, members, "blue", true)
}

// A member that is down while networks are created and removed catches up
// when it comes back, and its stale snapshot does not revive what was
// removed.
func TestAntiEntropyAfterRestart(t *testing.T) {
	members := startCluster(t, 3)
	createNetwork(t, members, "old", "10.1.0.0/16")

	m2 := members[2]
	snap, err := m2.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	port := int(m2.Addr().Port())
	if err := m2.Close(); err != nil {
		t.Fatal(err)
	}
	live := members[:2]
	netnstest.Eventually(t, 5*time.Second, "m2 gone", func() bool { return allSee(live, 2) })

	if err := members[0].RemoveNetwork("old"); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, members[1], "new", "10.2.0.0/16")

	cfg := testConfig("node-2")
	cfg.BindPort = port
	back := startMember(t, cfg)
	if err := back.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if _, err := back.Network("old"); err != nil {
		t.Fatalf("restored snapshot lacks network old: %v", err)
	}
	if _, err := back.Join(context.Background(), members[0].Addr().String()); err != nil {
		t.Fatal(err)
	}
	all := []*Cluster{members[0], members[1], back}
	waitNetwork(t, all, "new", true)
	waitNetwork(t, all, "old", false)
}

// A member cut off while a network is created and another removed catches
// up through push/pull once the partition heals.
func TestAntiEntropyAfterPartition(t *testing.T) {
	p := newPartition()
	members := startCluster(t, 3, p.option)
	createNetwork(t, members, "doomed", "10.3.0.0/16")

	p.split(members[2])
	// Long enough for both sides to declare the other dead: gossip is lost,
	// only push/pull after the heal can repair the state.
	netnstest.Eventually(t, 10*time.Second, "partition seen", func() bool {
		return members[0].NumAlive() == 2 && members[1].NumAlive() == 2 && members[2].NumAlive() == 1
	})
	if err := members[0].RemoveNetwork("doomed"); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, members[1], "during", "10.4.0.0/16")
	netnstest.Never(t, 500*time.Millisecond, "partition leaked", func() bool {
		_, err := members[2].Network("during")
		return err == nil
	})
	p.heal()
	healed := time.Now()
	waitNetwork(t, members, "during", true)
	t.Logf("caught up %s after the heal", time.Since(healed).Round(time.Millisecond))
	waitNetwork(t, members, "doomed", false)
	netnstest.Eventually(t, 15*time.Second, "membership healed", func() bool { return allSee(members, 3) })
}

// Two members create clashing networks at the same time: exactly one
// create succeeds, everyone ends up with the same winner, and the loser is
// told.
func TestConcurrentConflictingCreates(t *testing.T) {
	members := startCluster(t, 3)
	for round, specs := range [][2]NetworkSpec{
		{{Name: "same", Subnet: mustPrefix(t, "10.5.0.0/16")}, {Name: "same", Subnet: mustPrefix(t, "10.6.0.0/16")}},
		{{Name: "over-a", Subnet: mustPrefix(t, "10.7.0.0/16")}, {Name: "over-b", Subnet: mustPrefix(t, "10.7.128.0/17")}},
	} {
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_, errs[i] = members[i+1].CreateNetwork(ctx, specs[i])
			}()
		}
		wg.Wait()
		if (errs[0] == nil) == (errs[1] == nil) {
			t.Fatalf("round %d: errors %v / %v, want exactly one ErrConflict", round, errs[0], errs[1])
		}
		winner := specs[0]
		loser := errs[1]
		if errs[0] != nil {
			winner, loser = specs[1], errs[0]
		}
		if !errors.Is(loser, ErrConflict) {
			t.Fatalf("round %d: loser got %v", round, loser)
		}
		t.Logf("round %d: %s won; loser: %v", round, winner.Name, loser)
		netnstest.Eventually(t, 10*time.Second, "same winner everywhere", func() bool {
			for _, c := range members {
				n, err := c.Network(winner.Name)
				if err != nil || n.Subnet != winner.Subnet {
					return false
				}
				for _, other := range c.Networks() {
					if other.Name != winner.Name && other.Subnet.Overlaps(winner.Subnet) {
						return false
					}
				}
			}
			return true
		})
	}
}

// The same clash across a partition is only found when it heals: the lower
// (clock, node) create wins on every member and its loser gets an event.
func TestConflictFoundAfterPartition(t *testing.T) {
	p := newPartition()
	members := startCluster(t, 3, p.option)
	ev0, ev1 := watchEvents(t, members[0]), watchEvents(t, members[1])
	p.split(members[0])
	netnstest.Eventually(t, 10*time.Second, "partition seen", func() bool { return members[0].NumAlive() == 1 })

	a := mustCreate(t, members[0], "split", "10.8.0.0/16")
	b := mustCreate(t, members[1], "split", "10.9.0.0/16")
	win, lose, loserEvents := a, b, ev1
	if b.ID.less(a.ID) {
		win, lose, loserEvents = b, a, ev0
	}
	p.heal()
	netnstest.Eventually(t, 15*time.Second, "one winner everywhere", func() bool {
		for _, c := range members {
			if n, err := c.Network("split"); err != nil || n.ID != win.ID {
				return false
			}
		}
		return true
	})
	netnstest.Eventually(t, 5*time.Second, "conflict event at the loser", func() bool {
		ev, ok := loserEvents.find(func(e Event) bool { return e.Type == EventNetworkConflict })
		return ok && ev.Conflict.Lost.ID == lose.ID && ev.Conflict.Winner == win.ID
	})
}

// Replicas that receive the same records in any order agree, and a create
// that arrives after its removal stays removed.
func TestStateMergeIsOrderIndependent(t *testing.T) {
	nets := []netRecord{
		{Net: Network{ID: NetworkID{Clock: 5, Node: "b"}, NetworkSpec: NetworkSpec{Name: "x", Subnet: mustPrefix(t, "10.0.0.0/16"), VNI: 5000}}},
		{Net: Network{ID: NetworkID{Clock: 5, Node: "a"}, NetworkSpec: NetworkSpec{Name: "x", Subnet: mustPrefix(t, "10.1.0.0/16"), VNI: 5001}}},
		{Net: Network{ID: NetworkID{Clock: 3, Node: "c"}, NetworkSpec: NetworkSpec{Name: "y", Subnet: mustPrefix(t, "10.1.128.0/17"), VNI: 5002}}},
		{Net: Network{ID: NetworkID{Clock: 9, Node: "c"}, NetworkSpec: NetworkSpec{Name: "z", Subnet: mustPrefix(t, "10.2.0.0/16"), VNI: 5003}}},
		{Net: Network{ID: NetworkID{Clock: 7, Node: "d"}, NetworkSpec: NetworkSpec{Name: "w", Subnet: mustPrefix(t, "10.3.0.0/16"), VNI: 5004}}},
	}
	var recs []record
	for i := range nets {
		if err := nets[i].Net.normalize(); err != nil {
			t.Fatal(err)
		}
		recs = append(recs, record{net: &nets[i]})
	}
	removed := nets[4]
	removed.Deleted, removed.DelVer, removed.Reason = true, version{Clock: 8, Node: "d"}, reasonRemoved
	recs = append(recs, record{net: &removed})
	for i := range 3 {
		ep := epRecord{Ver: version{Clock: uint64(10 + i), Node: "a"}, Deleted: i == 2,
			EP: Endpoint{ID: "ep1", Network: "z", Node: "a", IP: netip.MustParseAddr(fmt.Sprintf("10.2.0.%d", 10+i))}}
		recs = append(recs, record{ep: &ep})
	}

	summary := func(s *state) string {
		var acc []string
		for name, id := range s.accepted {
			acc = append(acc, name+"="+id.String())
		}
		slices.Sort(acc)
		ep := s.endpoints["ep1"]
		return fmt.Sprintf("%v ep=%v/%s", acc, ep.rec.Deleted, ep.rec.EP.IP)
	}
	var want string
	rnd := rand.New(rand.NewPCG(1, 2))
	for trial := range 50 {
		s := newState("observer", func(Event) {})
		order := rnd.Perm(len(recs))
		for _, i := range order {
			s.apply(recs[i])
			if rnd.IntN(3) == 0 { // duplicates change nothing
				s.apply(recs[i])
			}
		}
		got := summary(s)
		if trial == 0 {
			want = got
			t.Logf("converged state: %s", got)
		} else if got != want {
			t.Fatalf("order %v gives %s, want %s", order, got, want)
		}
	}
	// (5,a) beats (5,b) for "x"; "y" (3,c) is older than both and overlaps
	// (5,a), so (5,a) loses to "y" and (5,b) wins "x".
	if want != "[x=5@b y=3@c z=9@c] ep=true/10.2.0.12" {
		t.Errorf("unexpected outcome %s", want)
	}
}

func TestTombstonesAreCollected(t *testing.T) {
	s := newState("me", func(Event) {})
	now := time.Unix(1000, 0)
	s.now = func() time.Time { return now }
	n, err := s.createNetwork(NetworkSpec{Name: "t", Subnet: mustPrefix(t, "10.0.0.0/16")})
	if err != nil {
		t.Fatal(err)
	}
	live := record{net: &netRecord{Net: n}}
	tomb := netRecord{Net: n, Deleted: true, DelVer: s.tick(), Reason: reasonRemoved}
	s.apply(record{net: &tomb})
	if s.apply(live) {
		t.Fatal("late create revived a removed network")
	}
	now = now.Add(2 * time.Hour)
	s.gc(time.Hour)
	if len(s.networks) != 0 {
		t.Fatalf("tombstone kept after its TTL: %d networks", len(s.networks))
	}
}
