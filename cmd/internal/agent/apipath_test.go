package agent

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
)

// TestAPIPathsAreNotRedirected: the mux would answer a path with '.', '..'
// or an empty segment with a redirect to the cleaned path (GET
// /v1/sandboxes/. led to the sandbox list); such a path is a 400 instead.
// A name given as a namespace path is escaped into one segment and still
// reaches its route.
// newHandlerTestAgent is a started agent, named node, on a fake datapath
// and host, without a default network or DNS: what the tests of its HTTP
// handler need. It is closed when the test ends.
func newHandlerTestAgent(tb testing.TB, node string) *Agent {
	tb.Helper()
	dir := tb.TempDir()
	a, err := New(Options{
		StateDir: dir, Socket: filepath.Join(dir, "sock"), NodeName: node, NoDefaultNetwork: true, NoDNS: true,
		Datapath: newFake(), Host: newFakeHost("10.99.0.0/16"), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { a.Close() })
	if err := a.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return a
}

func TestAPIPathsAreNotRedirected(t *testing.T) {
	h := newHandlerTestAgent(t, "paths").handler()
	for _, c := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/v1/sandboxes/.", http.StatusBadRequest},
		{"GET", "/v1/sandboxes/..", http.StatusBadRequest},
		{"DELETE", "/v1/networks/.", http.StatusBadRequest},
		{"GET", "/v1//networks", http.StatusBadRequest},
		{"GET", "/v1/networks/", http.StatusBadRequest},
		{"GET", "/v1/sandboxes/%2Fvar%2Frun%2Fnetns%2Fnope", http.StatusNotFound},
		{"GET", "/v1/sandboxes/nope", http.StatusNotFound},
		{"GET", "/v1/sandboxes", http.StatusOK},
	} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(c.method, c.path, nil))
		if w.Code != c.want {
			t.Errorf("%s %s: %d %s, want %d", c.method, c.path, w.Code, w.Body, c.want)
		}
	}
}
