package agent

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/dns"
)

// TestNamesAndAliasesAreOneLabel: an alias or sandbox name such as
// github.com would claim an outside name; the API refuses it before
// anything is created.
func TestNamesAndAliasesAreOneLabel(t *testing.T) {
	a := newTestAgent(t, t.TempDir(), newFake())
	defer a.Close()
	ctx := context.Background()
	for _, req := range []api.SandboxCreate{
		{Name: "hj1", Aliases: []string{"github.com"}},
		{Name: "hj2", Aliases: []string{"web", "evil.example."}},
		{Name: "hj3", Aliases: []string{"web."}},
		{Name: "github.com"},
		{Name: "-lead"},
	} {
		_, err := a.CreateSandbox(ctx, req)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("create %+v: %v, want invalid", req, err)
		}
	}
	if err := validAliases([]string{"web", "db_1", "x-y"}); err != nil {
		t.Errorf("good aliases refused: %v", err)
	}
	if len(a.Sandboxes()) != 0 {
		t.Fatalf("rejected requests left sandboxes: %+v", a.Sandboxes())
	}
}

// TestGossipedNamesMustBeOneLabel: names of remote endpoints that are not
// one DNS label never reach the DNS table; each is counted once.
func TestGossipedNamesMustBeOneLabel(t *testing.T) {
	a := newTestAgent(t, t.TempDir(), newFake())
	defer a.Close()
	ip := netip.MustParseAddr("10.77.0.5")
	names := map[string][]dns.Record{"ov1": {
		{Name: "remote1", Network: "ov1", IP: ip},
		{Name: "github.com", Network: "ov1", IP: ip},
		{Name: "bad name", Network: "ov1", IP: ip},
	}}
	a.names.setRemotes(names, a.log)
	a.names.setRemotes(names, a.log) // a second refresh counts nothing new
	got := a.names.remoteNames("ov1")
	count, _ := a.names.problems()
	if len(got) != 1 || got[0].Name != "remote1" {
		t.Fatalf("DNS records of the overlay: %+v, want only remote1", got)
	}
	if count != 2 {
		t.Fatalf("ignored names counted %d, want 2", count)
	}
	if st := a.Status(context.Background()); st.DNS == nil || st.DNS.IgnoredNames != 2 {
		t.Fatalf("status DNS %+v, want 2 ignored names", st.DNS)
	}
}

// TestInternalOnlySandboxesDoNotForward: the DNS server is told that a
// sandbox only on internal networks may not forward, and one that is also
// on a normal network may.
func TestInternalOnlySandboxesDoNotForward(t *testing.T) {
	a := newTestAgent(t, t.TempDir(), newFake())
	defer a.Close()
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	in := &networkRec{ID: "in1", Name: "in1", Driver: api.DriverBridge, Internal: true, Phase: phaseReady}
	out := &networkRec{ID: "out1", Name: "out1", Driver: api.DriverBridge, Phase: phaseReady}
	a.networks[in.ID], a.networks[out.ID] = in, out
	sb := &sandboxRec{Name: "iso", Mode: api.ModeNetNS, Phase: phaseReady}
	a.sandboxes[sb.Name] = sb
	a.indexEndpoint(&endpointRec{ID: "e1", NetworkID: in.ID, Sandbox: sb.Name, Created: now, Phase: phaseReady})
	a.updateForwarding(sb)
	if a.dns.Forwarding(sb.Name) {
		t.Fatal("sandbox only on an internal network may forward upstream")
	}
	a.indexEndpoint(&endpointRec{ID: "e2", NetworkID: out.ID, Sandbox: sb.Name, Created: now.Add(time.Second), Phase: phaseReady})
	a.updateForwarding(sb)
	if !a.dns.Forwarding(sb.Name) {
		t.Fatal("sandbox also on a normal network may not forward")
	}
	a.unindexEndpoint("e2")
	a.updateForwarding(sb)
	if a.dns.Forwarding(sb.Name) {
		t.Fatal("after leaving the normal network the sandbox still forwards")
	}
	a.unindexEndpoint("e1")
	delete(a.sandboxes, sb.Name)
	delete(a.networks, in.ID)
	delete(a.networks, out.ID)
}
