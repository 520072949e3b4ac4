package agent

import (
	"net/netip"
	"strings"
	"testing"
)

// TestConflictWinner: the publisher the cluster forwards an address to is
// the holder of its grant when that node publishes it, else the lowest
// node name, the same order remotesLocked gives the datapath.
func TestConflictWinner(t *testing.T) {
	for _, c := range []struct {
		self   string
		others []string
		holder string
		want   string
	}{
		{"n3", []string{"n1"}, "n3", "n3"}, // the grant beats the lower name
		{"n1", []string{"n3"}, "n3", "n3"},
		{"n3", []string{"n1"}, "", "n1"},       // no grant: lowest name
		{"n3", []string{"n1"}, "n2", "n1"},     // holder publishes nothing
		{"n2", []string{"n3", "n4"}, "", "n2"}, // three publishers
		{"n2", []string{"n3", "n4"}, "n4", "n4"},
	} {
		if got := conflictWinner(c.self, c.others, c.holder); got != c.want {
			t.Errorf("conflictWinner(%s, %v, %q) = %s, want %s", c.self, c.others, c.holder, got, c.want)
		}
	}
}

// TestConflictWarningsNameSandboxAndWinner: the status warning of a lost
// conflict says which sandbox, which address and which node has it.
func TestConflictWarningsNameSandboxAndWinner(t *testing.T) {
	g := newClusterGlue()
	g.setConflicts(map[string]addressConflict{
		"ep2": {network: "ov", sandbox: "web", ip: netip.MustParseAddr("10.7.0.9"), winner: "n1"},
		"ep1": {network: "ov", sandbox: "db", ip: netip.MustParseAddr("10.7.0.8"), winner: "n2"},
	})
	w := g.conflictWarnings()
	if len(w) != 2 || !strings.Contains(w[0], "10.7.0.8 of sandbox db") || !strings.Contains(w[0], "node n2") ||
		!strings.Contains(w[1], "10.7.0.9 of sandbox web") || !strings.Contains(w[1], "lost the address conflict") {
		t.Errorf("warnings: %q", w)
	}
	if got := g.conflictsByNetwork(); got["ov"] != 2 || len(got) != 1 {
		t.Errorf("by network: %v", got)
	}
}
