package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// request is one request the fake agent received.
type request struct {
	Method string
	Path   string
	Body   []byte
}

// fakeAgent serves the routes api.Client uses with canned data on a unix
// socket and records every request.
type fakeAgent struct {
	socket string

	mu       sync.Mutex
	requests []request

	status    api.Status
	networks  []api.Network
	sandboxes []api.Sandbox
	endpoints []api.Endpoint
	// reject, when set for "METHOD PATTERN", answers that route with it.
	reject map[string]*api.Error
	// netns is the namespace path reported for created sandboxes.
	netns string
}

func newFakeAgent(t *testing.T) *fakeAgent {
	t.Helper()
	// t.TempDir paths can exceed the 108-byte limit of unix socket paths.
	dir, err := os.MkdirTemp("", "fabricctl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	a := &fakeAgent{
		socket: filepath.Join(dir, "sock"),
		reject: map[string]*api.Error{},
		status: api.Status{
			Version: "1.0.0", Node: "node1", Uptime: "1h0m0s", Started: "2025-01-01T00:00:00Z",
			Datapath: "ebpf", Details: []string{"tc on eth0"}, Networks: 2, Sandboxes: 1, Endpoints: 1,
		},
		networks: []api.Network{
			{ID: "aaaaaaaaaaaaaaaaaaaa", Name: "bridge", Driver: "bridge", Subnet: "172.18.0.0/16", Gateway: "172.18.0.1", Endpoints: 1},
			{ID: "bbbbbbbbbbbbbbbbbbbb", Name: "blue", Driver: "bridge", Subnet: "10.10.0.0/24", Gateway: "10.10.0.1", Internal: true},
		},
		sandboxes: []api.Sandbox{{
			Name: "web", Mode: api.ModeNetNS, NetNS: "/var/run/netns/web", State: api.StateRunning, PID: 4242,
			Ports:     []api.Port{{Proto: "tcp", HostPort: 8080, Port: 80}},
			Endpoints: []api.Endpoint{{Network: "bridge", IP: "172.18.0.2/16"}},
		}},
		endpoints: []api.Endpoint{{
			ID: "ep1", Network: "bridge", Sandbox: "web", IfName: "eth0", HostIfName: "fab1234",
			IP: "172.18.0.2/16", MAC: "02:42:ac:12:00:02",
		}},
	}

	mux := http.NewServeMux()
	a.handle(mux, "GET /v1/status", func(*http.Request) (int, any) { return 200, a.status })
	a.networkRoutes(mux)
	a.sandboxRoutes(mux)
	a.handle(mux, "GET /v1/endpoints", func(*http.Request) (int, any) { return 200, a.endpoints })

	srv := httptest.NewUnstartedServer(mux)
	l, err := net.Listen("unix", a.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return a
}

// networkRoutes serves the network API from a.networks.
func (a *fakeAgent) networkRoutes(mux *http.ServeMux) {
	a.handle(mux, "POST /v1/networks", func(r *http.Request) (int, any) {
		var req api.NetworkCreate
		json.Unmarshal(a.last().Body, &req)
		return 201, api.Network{ID: "cccccccccccccccccccc", Name: req.Name, Driver: req.Driver, Subnet: req.Subnet}
	})
	a.handle(mux, "GET /v1/networks", func(*http.Request) (int, any) { return 200, a.networks })
	a.handle(mux, "GET /v1/networks/{name}", func(r *http.Request) (int, any) {
		return byName(a.networks, "network", r.PathValue("name"), func(n api.Network) string { return n.Name })
	})
	a.handle(mux, "DELETE /v1/networks/{name}", func(*http.Request) (int, any) { return 204, nil })
	a.handle(mux, "POST /v1/networks/{name}/connect", func(r *http.Request) (int, any) {
		return 200, api.Endpoint{Network: r.PathValue("name"), IfName: "eth1", IP: "10.10.0.5/24"}
	})
	a.handle(mux, "POST /v1/networks/{name}/disconnect", func(*http.Request) (int, any) { return 204, nil })
}

// sandboxRoutes serves the sandbox API from a.sandboxes.
func (a *fakeAgent) sandboxRoutes(mux *http.ServeMux) {
	a.handle(mux, "POST /v1/sandboxes", func(*http.Request) (int, any) {
		var req api.SandboxCreate
		json.Unmarshal(a.last().Body, &req)
		name := req.Name
		if name == "" {
			name = "gen-1"
		}
		ns := a.netns
		if req.Network == api.ModeHost {
			ns = ""
		}
		return 201, api.Sandbox{Name: name, Mode: api.ModeNetNS, NetNS: ns, State: api.StateCreated, Command: req.Command}
	})
	a.handle(mux, "GET /v1/sandboxes", func(*http.Request) (int, any) { return 200, a.sandboxes })
	a.handle(mux, "GET /v1/sandboxes/{name}", func(r *http.Request) (int, any) {
		return byName(a.sandboxes, "sandbox", r.PathValue("name"), func(s api.Sandbox) string { return s.Name })
	})
	a.handle(mux, "DELETE /v1/sandboxes/{name}", func(*http.Request) (int, any) { return 204, nil })
	a.handle(mux, "PUT /v1/sandboxes/{name}/process", func(*http.Request) (int, any) { return 204, nil })
}

// byName answers a GET of the item of items called name (of kind), or the
// agent's not-found error.
func byName[T any](items []T, kind, name string, nameOf func(T) string) (int, any) {
	for _, it := range items {
		if nameOf(it) == name {
			return 200, it
		}
	}
	return 404, api.Error{Message: kind + " " + name + " not found", Code: api.CodeNotFound}
}

// handle registers fn for pattern, recording the request first and
// answering with a configured rejection if there is one.
func (a *fakeAgent) handle(mux *http.ServeMux, pattern string, fn func(*http.Request) (int, any)) {
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		a.mu.Lock()
		a.requests = append(a.requests, request{Method: r.Method, Path: r.URL.Path, Body: body})
		rej := a.reject[pattern]
		a.mu.Unlock()
		code, out := 0, any(nil)
		if rej != nil {
			code, out = api.StatusOf(rej.Code), rej
		} else {
			code, out = fn(r)
		}
		if out == nil {
			w.WriteHeader(code)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(out)
	})
}

func (a *fakeAgent) last() request {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.requests[len(a.requests)-1]
}

func (a *fakeAgent) received() []request {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]request(nil), a.requests...)
}

// find returns the first recorded request with method and path.
func (a *fakeAgent) find(t *testing.T, method, path string) request {
	t.Helper()
	for _, r := range a.received() {
		if r.Method == method && r.Path == path {
			return r
		}
	}
	t.Fatalf("agent got no %s %s; got %v", method, path, a.summary())
	return request{}
}

func (a *fakeAgent) summary() []string {
	var s []string
	for _, r := range a.received() {
		s = append(s, r.Method+" "+r.Path)
	}
	return s
}

// result is what one fabricctl invocation produced.
type result struct {
	code   int
	stdout string
	stderr string
}

// ctl runs fabricctl against the fake agent.
func (a *fakeAgent) ctl(t *testing.T, args ...string) result {
	t.Helper()
	return runCtl(t, append([]string{"--socket", a.socket}, args...)...)
}

func runCtl(t *testing.T, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := execute(ctx, args, strings.NewReader(""), &out, &errOut)
	t.Logf("fabricctl %q: exit %d\nstdout:\n%s\nstderr:\n%s", args, code, out.String(), errOut.String())
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// decode unmarshals a recorded body into v.
func decode(t *testing.T, r request, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("decode %s %s body %q: %v", r.Method, r.Path, r.Body, err)
	}
}
