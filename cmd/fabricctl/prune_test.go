package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

func TestPrune(t *testing.T) {
	a := newFakeAgent(t)
	a.networks = append(a.networks,
		api.Network{ID: "dddddddddddddddddddd", Name: "unused", Driver: "bridge", Scope: "local"},
		api.Network{ID: "eeeeeeeeeeeeeeeeeeee", Name: "mesh", Driver: "overlay", Scope: "cluster"})
	a.networks[0].Endpoints = 0 // the default network, empty: still kept
	a.sandboxes = append(a.sandboxes, api.Sandbox{Name: "done", State: api.StateExited},
		api.Sandbox{Name: "idle", State: api.StateCreated})

	// Not confirmed: nothing removed, exit 1.
	r := a.ctlIn(t, "n\n", "network", "prune")
	if r.code != 1 || len(a.requestsTo("DELETE")) != 0 {
		t.Fatalf("prune answered no: exit %d, %v", r.code, a.requestsTo("DELETE"))
	}
	r = a.ctlIn(t, "y\n", "network", "prune")
	if r.code != 0 || r.stdout != "blue\nunused\n" {
		t.Errorf("network prune: exit %d, %q", r.code, r.stdout)
	}
	if got := strings.Join(a.requestsTo("DELETE"), " "); got != "/v1/networks/blue /v1/networks/unused" {
		t.Errorf("network prune removed %s", got)
	}
	r = a.ctl(t, "sandbox", "prune", "-f")
	if r.code != 0 || r.stdout != "done\n" {
		t.Errorf("sandbox prune -f: exit %d, %q", r.code, r.stdout)
	}
}

// ctlIn runs fabricctl against the fake agent with stdin.
func (a *fakeAgent) ctlIn(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := execute(ctx, append([]string{"--socket", a.socket}, args...), strings.NewReader(stdin), &out, &errOut)
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// requestsTo lists the paths of the recorded requests with method.
func (a *fakeAgent) requestsTo(method string) []string {
	var out []string
	for _, r := range a.received() {
		if r.Method == method {
			out = append(out, r.Path)
		}
	}
	return out
}
