package agent

import (
	"errors"
	"testing"
	"time"
)

// TestProbeProblemOnlyAfterMissesInARow: one lost probe (a lossy or slow
// underlay) is not a problem; probeProblemAfter in a row are, and one
// answer clears the count.
func TestProbeProblemOnlyAfterMissesInARow(t *testing.T) {
	g := newClusterGlue()
	lost := errors.New("timeout")
	for i := 1; i <= probeProblemAfter+1; i++ {
		g.setProbes(map[string]probe{"b": {err: lost}, "c": {rtt: time.Millisecond}})
		p, _ := g.probe("b")
		if p.missed != i {
			t.Fatalf("after %d lost probes: missed %d", i, p.missed)
		}
		if want := i >= probeProblemAfter; p.unanswered() != want {
			t.Fatalf("after %d lost probes: unanswered %v, want %v", i, p.unanswered(), want)
		}
		if c, _ := g.probe("c"); c.unanswered() || c.missed != 0 {
			t.Fatalf("answering peer: %+v", c)
		}
	}
	g.setProbes(map[string]probe{"b": {rtt: time.Millisecond}})
	if p, _ := g.probe("b"); p.unanswered() || p.missed != 0 {
		t.Fatalf("after an answer: %+v", p)
	}
	g.setProbes(map[string]probe{"b": {err: lost}})
	if p, _ := g.probe("b"); p.unanswered() || p.missed != 1 {
		t.Fatalf("one loss after an answer: %+v", p)
	}
}
