package cluster

import (
	"context"
	"testing"

	"github.com/hashicorp/memberlist"
)

// quietConfig is a test member that sends nothing by itself (no gossip,
// probes or periodic full-state exchange), so that its sockets count only
// what a join does.
func quietConfig(name string) Config {
	cfg := testConfig(name)
	cfg.tuneMemberlist = func(mc *memberlist.Config) {
		mc.GossipNodes, mc.ProbeInterval, mc.PushPullInterval = 0, 0, 0
	}
	return cfg
}

// TestJoinExchangesStateWithOneSeed: given three seeds, a join makes one
// full-state exchange, with one seed, not one with each (each seed of a
// large cluster would otherwise serve every joining node).
func TestJoinExchangesStateWithOneSeed(t *testing.T) {
	var seeds []string
	var members []*Cluster
	for _, name := range []string{"seed-a", "seed-b", "seed-c"} {
		c := startMember(t, quietConfig(name))
		members = append(members, c)
		seeds = append(seeds, c.Addr().String())
	}
	joiner := startMember(t, quietConfig("joiner"))
	n, err := joiner.Join(context.Background(), seeds...)
	if err != nil || n != 1 {
		t.Fatalf("Join = %d, %v; want 1, nil", n, err)
	}
	served := 0
	for _, c := range members {
		served += int(c.GossipTraffic().StreamsIn)
	}
	if served != 1 || joiner.GossipTraffic().StreamsOut != 1 {
		t.Fatalf("the seeds served %d full-state exchanges and the joiner dialled %d, want 1 and 1", served, joiner.GossipTraffic().StreamsOut)
	}
	if got := joiner.NumAlive(); got != 2 {
		t.Fatalf("the joiner sees %d members, want itself and the seed it joined", got)
	}
}

// TestJoinSkipsDeadSeed: a seed that does not answer is passed over for
// the next, in whichever order they are tried.
func TestJoinSkipsDeadSeed(t *testing.T) {
	gone, err := New(quietConfig("gone"))
	if err != nil {
		t.Fatal(err)
	}
	dead := gone.Addr().String()
	if err := gone.Stop(); err != nil {
		t.Fatal(err)
	}
	live := startMember(t, quietConfig("live"))
	for i := range 4 {
		j := startMember(t, quietConfig("joiner-"+string(rune('a'+i))))
		if n, err := j.Join(context.Background(), dead, live.Addr().String()); err != nil || n != 1 {
			t.Fatalf("Join through a dead and a live seed = %d, %v; want 1, nil", n, err)
		}
	}
}
