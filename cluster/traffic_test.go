package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// TestGossipTraffic: a join is one TCP stream from the joiner to the seed
// (the full-state exchange), and probes and gossip then flow both ways as
// datagrams, which the counters of both members show.
func TestGossipTraffic(t *testing.T) {
	seed := startMember(t, testConfig("traffic-seed"))
	joiner := startMember(t, testConfig("traffic-joiner"))
	before := seed.GossipTraffic()
	if before.StreamsIn != 0 || before.PacketsIn != 0 {
		t.Fatalf("a member nobody knows counted traffic: %+v", before)
	}
	if _, err := joiner.Join(context.Background(), seed.Addr().String()); err != nil {
		t.Fatal(err)
	}
	if got := joiner.GossipTraffic().StreamsOut; got < 1 {
		t.Fatalf("joiner dialled %d streams, want at least the join's", got)
	}
	netnstest.Eventually(t, 10*time.Second, "datagrams both ways and the join's stream counted", func() bool {
		s, j := seed.GossipTraffic(), joiner.GossipTraffic()
		return s.StreamsIn >= 1 && s.PacketsIn > 0 && j.PacketsIn > 0 &&
			s.BytesIn >= s.PacketsIn && j.BytesOut >= j.PacketsOut && s.PacketsOut > 0
	})
}
