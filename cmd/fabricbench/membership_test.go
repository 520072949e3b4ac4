package main

import (
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestMeasureConvergence keeps the membership measurement exercised at a
// size the test machine handles (FABRIC_MEMBERS sets another, e.g. 1000;
// FABRIC_MEMBERS_LIMIT the join limit, FABRIC_MEMBERS_WAVE the wave size,
// FABRIC_MEMBERS_HEAP a file for a heap profile at full view);
// `make bench` runs it for 50, 200 and 1,000 members.
func TestMeasureConvergence(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 20 members")
	}
	n := 20
	if v := os.Getenv("FABRIC_MEMBERS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatalf("FABRIC_MEMBERS=%q: %v", v, err)
		}
	}
	if v := os.Getenv("FABRIC_MEMBERS_LIMIT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("FABRIC_MEMBERS_LIMIT=%q: %v", v, err)
		}
		membershipJoinLimit, membershipFailLimit = d, d
	}
	if v := os.Getenv("FABRIC_MEMBERS_WAVE"); v != "" {
		var err error
		if membershipWave, err = strconv.Atoi(v); err != nil {
			t.Fatalf("FABRIC_MEMBERS_WAVE=%q: %v", v, err)
		}
	}
	if path := os.Getenv("FABRIC_MEMBERS_HEAP"); path != "" {
		defer func() { atFullView = nil }()
		atFullView = func() {
			f, err := os.Create(path)
			if err != nil {
				t.Errorf("heap profile: %v", err)
				return
			}
			defer f.Close()
			if err := pprof.WriteHeapProfile(f); err != nil {
				t.Errorf("heap profile: %v", err)
			}
		}
	}
	load := loadAverage()
	conv, err := measureConvergence(n)
	t.Logf("load average before: %s, after: %s", load, loadAverage())
	if conv.memPerMember > 0 {
		t.Logf("n=%d: %.0f KiB and %.1f goroutines per member when the memory was measured", n, conv.memPerMember/1024, conv.goroutines)
	}
	if err != nil {
		t.Fatal(err)
	}
	if conv.fullView <= 0 || conv.failureSeen <= 0 || conv.memPerMember <= 0 || conv.cpu <= 0 {
		t.Fatalf("%+v: not measured", conv)
	}
	t.Logf("n=%d: full view %s (last wave %s, %s CPU), failure seen by all %s, %.0f KiB and %.1f goroutines per member",
		n, conv.fullView.Round(time.Millisecond), conv.lastWave.Round(time.Millisecond), conv.cpu.Round(time.Millisecond),
		conv.failureSeen.Round(time.Millisecond), conv.memPerMember/1024, conv.goroutines)
}

// Members above membershipWave join in waves; every wave is measured.
func TestMeasureConvergenceInWaves(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 12 members")
	}
	defer func(w int) { membershipWave = w }(membershipWave)
	membershipWave = 5
	conv, err := measureConvergence(12)
	if err != nil {
		t.Fatal(err)
	}
	if conv.lastWave <= 0 || conv.lastWave >= conv.fullView || conv.failureSeen <= 0 {
		t.Fatalf("%+v: the last wave must be measured, and be shorter than the whole", conv)
	}
	// The cost of the joins is counted: every member joined, the last
	// wave was the largest full view, and the members received gossip.
	if conv.joined != 12 || conv.reached.members != 12 || conv.reached.fullView <= 0 || conv.reached.fullView > conv.fullView ||
		conv.joinCPU <= 0 || conv.packetsIn < 12 || conv.bytesIn < conv.packetsIn {
		t.Fatalf("%+v: the cost of the joins is not measured", conv)
	}
}

// A run that cannot finish says how far it got.
func TestJoinAllSaysHowFarItGot(t *testing.T) {
	members, stop, err := startMembers(3)
	defer stop()
	if err != nil {
		t.Fatal(err)
	}
	var joined atomic.Int64
	err = joinAll(members, 1, time.Now(), &joined)
	if err == nil || !strings.Contains(err.Error(), "only 1 of 3 members joined") || !strings.Contains(err.Error(), "2 never tried") {
		t.Fatalf("got %v, want the count of members joined and not tried", err)
	}
}

// A check that never returns (a swamped member's lock) does not hold the
// run past its deadline.
func TestPollUntilBoundsABlockedCheck(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	start := time.Now()
	if pollUntil(start.Add(100*time.Millisecond), func() bool { <-block; return true }) {
		t.Fatal("a check that never returned counted as true")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("pollUntil returned after %s, deadline 100ms", d)
	}
}
