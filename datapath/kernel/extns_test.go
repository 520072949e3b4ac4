package kernel

import (
	"context"
	"errors"
	"testing"

	"github.com/fabricnet/fabric/datapath"
	fabricns "github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// TestEndpointNamespaceCheckedByID: an endpoint whose path names another
// namespace than the one it was attached to (a reused PID, a recreated
// bind mount) is refused and that namespace is not touched; with the
// right identity it is programmed as usual.
func TestEndpointNamespaceCheckedByID(t *testing.T) {
	l := newLab(t)
	n := network("idn", "fb-idn"+netnstest.UniqueName("")[:4], "10.93.0.0/24", false)
	l.ensureNetwork(n)
	_, p1 := l.sandbox()
	s2, p2 := l.sandbox()
	id1, err := fabricns.IDOf(p1)
	if err != nil {
		t.Fatal(err)
	}
	ep := endpoint("idep", n, p2, "eth0", "fvidep", 2, true)
	ep.NetNSID = id1 // attached to p1, but the path now names p2
	err = l.dp.EnsureEndpoint(context.Background(), n, ep)
	if !errors.Is(err, datapath.ErrInvalid) {
		t.Fatalf("EnsureEndpoint into the wrong namespace: %v, want invalid", err)
	}
	if out := netnstest.Run(t, s2, "ip", "-o", "link", "show"); countLines(out) != 1 {
		t.Fatalf("the other namespace was changed:\n%s", out)
	}
	if !l.linkGone("fvidep") {
		t.Fatal("host veth left after the refusal")
	}
	ep.NetNSPath = p1
	l.ensureEndpoint(n, ep)
}

func countLines(s string) int {
	n := 0
	for _, c := range s {
		if c == '\n' {
			n++
		}
	}
	return n
}
