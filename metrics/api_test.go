package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestAPIWrap(t *testing.T) {
	api := NewAPIMetrics()
	reg := prometheus.NewRegistry()
	reg.MustRegister(api)

	ok := api.Wrap("GET /v1/status", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "{}") // no WriteHeader: an implicit 200
	}))
	bad := api.Wrap("POST /v1/networks", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusConflict)
		w.WriteHeader(http.StatusOK) // ignored by net/http; the 409 was sent
	}))
	for range 3 {
		ok.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/v1/status", nil))
	}
	bad.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/v1/networks", nil))

	if got := value(t, reg, "fabric_api_requests_total", map[string]string{"method": "GET", "route": "/v1/status", "code": "200"}); got != 3 {
		t.Errorf("status requests = %v, want 3", got)
	}
	if got := value(t, reg, "fabric_api_requests_total", map[string]string{"method": "POST", "route": "/v1/networks", "code": "409"}); got != 1 {
		t.Errorf("conflicts = %v, want 1", got)
	}
	if got := value(t, reg, "fabric_api_request_duration_seconds", map[string]string{"method": "GET", "route": "/v1/status"}); got != 3 {
		t.Errorf("status durations observed = %v, want 3", got)
	}
}

// TestAPIWrapMux checks the route label is the mux pattern, also when a
// middleware between replaces the request (as the agent's does for
// non-GET requests), and that unknown paths share one label.
func TestAPIWrapMux(t *testing.T) {
	api := NewAPIMetrics()
	reg := prometheus.NewRegistry()
	reg.MustRegister(api)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/networks/{name}", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no such network", http.StatusNotFound)
	})
	mux.HandleFunc("DELETE /v1/networks/{name}", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	replace := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(w, r.WithContext(context.WithoutCancel(r.Context())))
		})
	}
	h := replace(api.WrapMux(mux))
	for _, req := range []struct{ method, path string }{
		{"GET", "/v1/networks/a"}, {"GET", "/v1/networks/b"}, {"DELETE", "/v1/networks/a"},
		{"GET", "/etc/passwd"}, {"GET", "/wp-admin"},
	} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(req.method, req.path, nil))
	}
	for _, c := range []struct {
		method, route, code string
		want                float64
	}{
		{"GET", "/v1/networks/{name}", "404", 2},
		{"DELETE", "/v1/networks/{name}", "204", 1},
		{"", unmatchedRoute, "404", 2},
	} {
		if got := value(t, reg, "fabric_api_requests_total", map[string]string{"method": c.method, "route": c.route, "code": c.code}); got != c.want {
			t.Errorf("%s %s %s: %v requests, want %v", c.method, c.route, c.code, got, c.want)
		}
	}
}

func TestAPINilRecordsNothing(t *testing.T) {
	var api *APIMetrics
	called := false
	h := http.HandlerFunc(func(http.ResponseWriter, *http.Request) { called = true })
	api.Wrap("x", h).ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	api.Observe("x", 200, time.Millisecond)
	mux := http.NewServeMux()
	if got := api.WrapMux(mux); got != http.Handler(mux) {
		t.Error("nil APIMetrics must return the mux itself")
	}
	if !called {
		t.Error("handler not called through a nil APIMetrics")
	}
}

// TestAPIFlushReachesWriter checks that wrapping does not hide the
// writer's optional interfaces from http.ResponseController.
func TestAPIFlushReachesWriter(t *testing.T) {
	api := NewAPIMetrics()
	h := api.Wrap("GET /stream", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Errorf("flush through the wrapper: %v", err)
		}
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/stream", nil))
	if !rec.Flushed {
		t.Error("the underlying writer was not flushed")
	}
}

func TestServe(t *testing.T) {
	reg, _ := newFullRegistry(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, Handler(reg, nil)) }()

	resp, err := http.Get("http://" + ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "fabric_build_info{") {
		t.Fatalf("GET /metrics: %s\n%.300s", resp.Status, body)
	}
	resp, err = http.Get("http://" + ln.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "ok\n" {
		t.Errorf("GET /healthz: %s %q, want 200 ok", resp.Status, body)
	}
	resp, err = http.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /: %s, want 404 (only /metrics and /healthz are served)", resp.Status)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Error("still listening after Serve returned")
	}
}

func TestServeListenerError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	err = Serve(context.Background(), ln, http.NotFoundHandler())
	if !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Serve on a closed listener: %v, want an error wrapping net.ErrClosed", err)
	}
}
