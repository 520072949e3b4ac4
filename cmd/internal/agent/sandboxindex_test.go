package agent

import (
	"fmt"
	"testing"
	"time"
)

// TestSandboxEndpointsIndexed: finding a sandbox's endpoints (several
// times per create: its primary endpoint, its interface names) costs the
// same with 20,000 endpoints of other sandboxes as with 10; a walk over
// every endpoint made each create slower the more endpoints there were.
// The index follows adds, replacements and removals.
func TestSandboxEndpointsIndexed(t *testing.T) {
	a := newTestAgent(t, t.TempDir(), newFake())
	defer a.Close()
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	add := func(id, sandbox string) {
		a.indexEndpoint(&endpointRec{ID: id, Sandbox: sandbox, IfName: "eth0", Created: now})
	}
	add("mine0", "mine")
	add("mine1", "mine")
	a.indexEndpoint(&endpointRec{ID: "mine1", Sandbox: "mine", IfName: "eth1", Created: now.Add(time.Second)})
	timeLookups := func() time.Duration {
		best := time.Duration(1 << 62)
		for range 5 {
			start := time.Now()
			for range 200 {
				if eps := a.sandboxEndpoints("mine"); len(eps) != 2 {
					t.Fatalf("sandbox endpoints: %d, want 2", len(eps))
				}
			}
			best = min(best, time.Since(start))
		}
		return best
	}
	for i := range 10 {
		add(fmt.Sprintf("few%d", i), fmt.Sprintf("other%d", i))
	}
	few := timeLookups()
	for i := range 20000 {
		add(fmt.Sprintf("many%d", i), fmt.Sprintf("other%d", i))
	}
	many := timeLookups()
	t.Logf("200 lookups: %v with 10 other endpoints, %v with 20,010", few, many)
	if many > 5*few+time.Millisecond {
		t.Errorf("looking up a sandbox's endpoints took %v with 20,010 other endpoints, %v with 10", many, few)
	}
	if got := a.nextIfName("mine"); got != "eth2" {
		t.Errorf("next interface name: %s, want eth2 (eth0 and the replaced eth1 in use)", got)
	}
	a.unindexEndpoint("mine0")
	if eps := a.sandboxEndpoints("mine"); len(eps) != 1 || eps[0].IfName != "eth1" {
		t.Errorf("after removing mine0: %+v", eps)
	}
	a.unindexEndpoint("mine1")
	if _, ok := a.bySandbox["mine"]; ok || len(a.sandboxEndpoints("mine")) != 0 {
		t.Error("a sandbox without endpoints is still indexed")
	}
}
