package main

import (
	"os"
	"strconv"
	"testing"
	"time"
)

// TestMeasureConvergence keeps the membership measurement exercised at a
// size the test machine handles (FABRIC_MEMBERS sets another, e.g. 1000);
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
	conv, err := measureConvergence(n)
	if err != nil {
		t.Fatal(err)
	}
	if conv.fullView <= 0 || conv.failureSeen <= 0 || conv.memPerMember <= 0 {
		t.Fatalf("%+v: not measured", conv)
	}
	t.Logf("n=%d: full view %s, failure seen by all %s, %.0f KiB and %.1f goroutines per member",
		n, conv.fullView.Round(time.Millisecond), conv.failureSeen.Round(time.Millisecond), conv.memPerMember/1024, conv.goroutines)
}
