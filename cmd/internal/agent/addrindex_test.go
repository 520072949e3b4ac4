package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// TestPerQueryLookupsIndexed: the lookups made per request (naming the
// sandbox behind a query forwarded by Docker's resolver, from its source
// address; finding a sandbox's endpoint on a network to set its aliases or
// to disconnect it) cost the same with 20,000 endpoints of other sandboxes
// as with 10: each was a walk over every endpoint.
func TestPerQueryLookupsIndexed(t *testing.T) {
	a := newTestAgent(t, t.TempDir(), newFake())
	defer a.Close()
	ctx := context.Background()
	name := sandboxName(t, "ai")
	if _, err := a.CreateSandbox(ctx, api.SandboxCreate{Name: name, IP: "10.200.0.7"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateNetwork(ctx, api.NetworkCreate{Name: "aside", Subnet: "10.201.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	mine := netip.MustParseAddr("10.200.0.7")
	lookups := map[string]func(){
		"sandbox of an address": func() {
			if got, ok := a.sandboxOfAddr(mine); !ok || got != name {
				t.Fatalf("sandbox of %s: %q %v, want %q", mine, got, ok, name)
			}
		},
		"set aliases": func() {
			if err := a.SetAliases(name, "aside", []string{"x"}); !errors.Is(err, ErrNotFound) {
				t.Fatalf("set aliases on a network the sandbox is not on: %v", err)
			}
		},
		"disconnect": func() {
			if err := a.Disconnect(ctx, "aside", api.Disconnect{Sandbox: name}); !errors.Is(err, ErrNotFound) {
				t.Fatalf("disconnect from a network the sandbox is not on: %v", err)
			}
		},
	}
	timeLookups := func(lookup func()) time.Duration {
		best := time.Duration(1 << 62)
		for range 5 {
			start := time.Now()
			for range 200 {
				lookup()
			}
			best = min(best, time.Since(start))
		}
		return best
	}
	now := time.Now()
	add := func(i int) {
		addr := netip.AddrFrom4([4]byte{10, 250, byte(i >> 8), byte(i)})
		a.indexEndpoint(&endpointRec{ID: fmt.Sprintf("other%d", i), NetworkID: "elsewhere", Sandbox: fmt.Sprintf("other%d", i),
			IfName: "eth0", Addr: netip.PrefixFrom(addr, 16), Created: now, Phase: phaseReady})
	}
	for i := range 10 {
		add(i)
	}
	few := map[string]time.Duration{}
	for what, lookup := range lookups {
		few[what] = timeLookups(lookup)
	}
	for i := 10; i < 20010; i++ {
		add(i)
	}
	for what, lookup := range lookups {
		many := timeLookups(lookup)
		t.Logf("%s, 200 times: %v with 10 other endpoints, %v with 20,010", what, few[what], many)
		if many > 5*few[what]+time.Millisecond {
			t.Errorf("%s took %v with 20,010 other endpoints, %v with 10", what, many, few[what])
		}
	}
	for i := range 20010 {
		a.unindexEndpoint(fmt.Sprintf("other%d", i))
	}
	if len(a.byAddr) != len(a.endpoints) {
		t.Errorf("%d addresses indexed for %d endpoints after removing the others", len(a.byAddr), len(a.endpoints))
	}
}

// TestAddrIndexFollowsChanges: the index by address follows a
// replacement, a disconnect, a sandbox's removal and a restart of the
// agent (the records are indexed again from the store).
func TestAddrIndexFollowsChanges(t *testing.T) {
	dir, dp, host := t.TempDir(), newFake(), newFakeHost()
	a := newTestAgentOn(t, dir, dp, host)
	defer func() { a.Close() }()
	ctx := context.Background()
	kept, gone := sandboxName(t, "ak"), sandboxName(t, "ag")
	for _, c := range []struct{ name, ip string }{{kept, "10.200.0.7"}, {gone, "10.200.0.8"}} {
		if _, err := a.CreateSandbox(ctx, api.SandboxCreate{Name: c.name, IP: c.ip}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.CreateNetwork(ctx, api.NetworkCreate{Name: "aside", Subnet: "10.201.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Connect(ctx, "aside", api.Connect{Sandbox: kept, IP: "10.201.0.5"}); err != nil {
		t.Fatal(err)
	}
	owner := func(ip string) string {
		got, _ := a.sandboxOfAddr(netip.MustParseAddr(ip))
		return got
	}
	for ip, want := range map[string]string{"10.200.0.7": kept, "10.201.0.5": kept, "10.200.0.8": gone} {
		if got := owner(ip); got != want {
			t.Errorf("sandbox of %s: %q, want %q", ip, got, want)
		}
	}

	// A record replaced with another address moves its entry.
	a.mu.Lock()
	var ep *endpointRec
	for _, e := range a.bySandbox[gone] {
		ep = e
	}
	moved := *ep
	moved.Addr = netip.MustParsePrefix("10.200.0.9/16")
	a.indexEndpoint(&moved)
	a.mu.Unlock()
	if got := owner("10.200.0.8"); got != "" {
		t.Errorf("10.200.0.8 still names %q after its endpoint moved to 10.200.0.9", got)
	}
	if got := owner("10.200.0.9"); got != gone {
		t.Errorf("sandbox of 10.200.0.9: %q, want %q", got, gone)
	}
	a.mu.Lock()
	a.indexEndpoint(ep)
	a.mu.Unlock()

	if err := a.Disconnect(ctx, "aside", api.Disconnect{Sandbox: kept}); err != nil {
		t.Fatal(err)
	}
	if err := a.RemoveSandbox(ctx, gone); err != nil {
		t.Fatal(err)
	}
	for _, ip := range []string{"10.201.0.5", "10.200.0.8"} {
		if got := owner(ip); got != "" {
			t.Errorf("%s still names %q after its endpoint was removed", ip, got)
		}
	}
	if len(a.byAddr) != 1 || len(a.endpoints) != 1 {
		t.Errorf("%d addresses indexed for %d endpoints, want 1 for 1", len(a.byAddr), len(a.endpoints))
	}

	a.Close()
	a = newTestAgentOn(t, dir, dp, host)
	if got := owner("10.200.0.7"); got != kept {
		t.Errorf("after a restart, sandbox of 10.200.0.7: %q, want %q", got, kept)
	}
	if len(a.byAddr) != len(a.endpoints) || len(a.endpoints) != 1 {
		t.Errorf("after a restart, %d addresses indexed for %d endpoints, want 1 for 1", len(a.byAddr), len(a.endpoints))
	}
}
