package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/hashicorp/memberlist"
)

// TestResyncAfterJoin: with gossip, probes and periodic push/pull all
// turned off, a member that joined the seed early learns about one that
// joined later only through the full-state exchange the later one makes
// after joining (scheduleResync).
func TestResyncAfterJoin(t *testing.T) {
	noGossip := func(cfg *Config) {
		cfg.tuneMemberlist = func(mc *memberlist.Config) {
			mc.GossipNodes, mc.ProbeInterval, mc.PushPullInterval = 0, 0, 0
		}
	}
	var m [3]*Cluster
	for i, name := range []string{"seed", "early", "late"} {
		cfg := testConfig(name)
		noGossip(&cfg)
		m[i] = startMember(t, cfg)
	}
	seed, early, late := m[0], m[1], m[2]
	ctx := context.Background()
	if _, err := early.Join(ctx, seed.Addr().String()); err != nil {
		t.Fatal(err)
	}
	// Join returns once early has the seed's state; the seed merges
	// early's a moment later (it answers first). Until it has, it could
	// not tell late about early.
	netnstest.Eventually(t, 5*time.Second, "the seed to merge early's state", func() bool { return seed.NumAlive() == 2 })
	if _, err := late.Join(ctx, seed.Addr().String()); err != nil {
		t.Fatal(err)
	}
	if n := late.NumAlive(); n != 3 {
		t.Fatalf("late sees %d members after joining the seed, want 3", n)
	}
	// Nothing spreads by itself in this set-up.
	netnstest.Never(t, resyncDelay/2, "early learnt about late before any re-sync (is gossip off?)", func() bool { return early.NumAlive() != 2 })
	netnstest.Eventually(t, resyncDelay*5/4+2*time.Second, "early to learn about late through late's re-sync", func() bool { return early.NumAlive() == 3 })
}
