package agent

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// TestAdoptLinkConflictIndexed: refusing to adopt a host link that is
// already an endpoint's costs the same with 20,000 other endpoints as with
// 10 (a walk over every endpoint made each Docker connect slower the more
// endpoints there were), and the index by host interface follows adds,
// replacements and removals.
func TestAdoptLinkConflictIndexed(t *testing.T) {
	a := newTestAgent(t, t.TempDir(), newFake())
	defer a.Close()
	a.mu.Lock()
	defer a.mu.Unlock()
	n := &networkRec{ID: "net-adopt", Name: "adopt", Driver: api.DriverBridge}
	a.indexNetwork(n, nil)
	sb := &sandboxRec{Name: "ext", Mode: api.ModeExternal, NetNS: "/proc/1/ns/net"}
	now := time.Now()
	add := func(id, sandbox, hostIf string) {
		a.indexEndpoint(&endpointRec{ID: id, NetworkID: n.ID, Sandbox: sandbox, IfName: "eth0", HostIfName: hostIf, Created: now})
	}
	add("taken", "other", "fdhtaken")
	refuse := func() {
		err := a.adoptLink(sb, &endpointRec{ID: "new", NetworkID: n.ID, Sandbox: sb.Name}, "fdhtaken")
		if !errors.Is(err, ErrConflict) {
			t.Fatalf("adopting a link endpoint taken has: %v, want a conflict", err)
		}
	}
	timeRefusals := func() time.Duration {
		best := time.Duration(1 << 62)
		for range 5 {
			start := time.Now()
			for range 200 {
				refuse()
			}
			best = min(best, time.Since(start))
		}
		return best
	}
	for i := range 10 {
		add(fmt.Sprintf("few%d", i), fmt.Sprintf("other%d", i), fmt.Sprintf("fvfew%d", i))
	}
	few := timeRefusals()
	for i := range 20000 {
		add(fmt.Sprintf("many%d", i), fmt.Sprintf("other%d", i), fmt.Sprintf("fvmany%d", i))
	}
	many := timeRefusals()
	t.Logf("200 refusals: %v with 10 other endpoints, %v with 20,010", few, many)
	if many > 5*few+time.Millisecond {
		t.Errorf("refusing a taken link took %v with 20,010 other endpoints, %v with 10", many, few)
	}

	// A replacement with another host interface moves the entry; a
	// removal drops it.
	a.indexEndpoint(&endpointRec{ID: "taken", NetworkID: n.ID, Sandbox: "other", IfName: "eth0", HostIfName: "fdhmoved", Created: now})
	if ep := a.endpointWithHostIf("fdhtaken"); ep != nil {
		t.Errorf("fdhtaken still indexed to %s after its endpoint moved to fdhmoved", ep.ID)
	}
	if ep := a.endpointWithHostIf("fdhmoved"); ep == nil || ep.ID != "taken" {
		t.Errorf("fdhmoved indexed to %v, want endpoint taken", ep)
	}
	a.unindexEndpoint("taken")
	if _, ok := a.byHostIf["fdhmoved"]; ok || a.endpointWithHostIf("fdhmoved") != nil {
		t.Error("a removed endpoint's host interface is still indexed")
	}
	if len(a.byHostIf) != len(a.endpoints) {
		t.Errorf("%d host interfaces indexed for %d endpoints (each has its own)", len(a.byHostIf), len(a.endpoints))
	}
}
