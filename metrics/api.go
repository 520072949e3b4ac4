package metrics

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// APIMetrics counts and times the agent's API requests. Unlike the other
// families these are events, not state, so they are recorded as they happen.
// A nil *APIMetrics records nothing, so code and tests that run without
// metrics need no special case.
type APIMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// unmatchedRoute labels requests no route matched, so that scanners cannot
// create a series per path they try.
const unmatchedRoute = "unmatched"

// NewAPIMetrics makes the instruments; pass them in Sources.API to export
// them.
func NewAPIMetrics() *APIMetrics {
	return &APIMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fabric_api_requests_total",
			Help: "API requests served, by HTTP method, route (the path pattern) and HTTP status code.",
		}, []string{"method", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "fabric_api_request_duration_seconds",
			Help: "How long API requests took, by HTTP method and route.",
			// Reads take microseconds; creating a network or a sandbox
			// with a running command takes tens to hundreds of ms.
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"method", "route"}),
	}
}

// Describe implements prometheus.Collector.
func (m *APIMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.requests.Describe(ch)
	m.duration.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *APIMetrics) Collect(ch chan<- prometheus.Metric) {
	m.requests.Collect(ch)
	m.duration.Collect(ch)
}

// Observe records one request. route is a mux pattern, "GET
// /v1/networks/{name}" or just "/v1/networks/{name}": its method, if any,
// goes into the method label, so that route is the path alone.
func (m *APIMetrics) Observe(route string, code int, d time.Duration) {
	if m == nil {
		return
	}
	method, path := splitPattern(route)
	if path == "" {
		path = unmatchedRoute
	}
	m.requests.WithLabelValues(method, path, strconv.Itoa(code)).Inc()
	m.duration.WithLabelValues(method, path).Observe(d.Seconds())
}

// splitPattern splits "METHOD /path" (net/http's pattern syntax) into its
// method and path; a pattern without a method has method "".
func splitPattern(p string) (method, path string) {
	m, rest, ok := strings.Cut(p, " ")
	if !ok || m == "" || strings.Trim(m, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") != "" {
		return "", p
	}
	return m, strings.TrimLeft(rest, " ")
}

// Wrap instruments one handler under a fixed route name.
func (m *APIMetrics) Wrap(route string, h http.Handler) http.Handler {
	if m == nil {
		return h
	}
	return m.instrument(h, func(*http.Request) string { return route })
}

// WrapMux instruments every route of mux, each labelled with the pattern it
// was registered with ("GET /v1/networks/{name}"), which keeps the label
// set as small as the route table. The pattern is looked up before serving,
// so middleware between this and the mux may replace the request freely.
func (m *APIMetrics) WrapMux(mux *http.ServeMux) http.Handler {
	if m == nil {
		return mux
	}
	return m.instrument(mux, func(r *http.Request) string {
		_, pattern := mux.Handler(r)
		return pattern
	})
}

func (m *APIMetrics) instrument(h http.Handler, route func(*http.Request) string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		name := route(r)
		rec := &codeRecorder{ResponseWriter: w}
		h.ServeHTTP(rec, r)
		m.Observe(name, rec.status(), time.Since(start))
	})
}

// codeRecorder remembers the status a handler sent.
type codeRecorder struct {
	http.ResponseWriter
	code int
}

func (r *codeRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *codeRecorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the real writer (Flush,
// deadlines).
func (r *codeRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *codeRecorder) status() int {
	if r.code == 0 {
		return http.StatusOK // a handler that writes nothing sends 200
	}
	return r.code
}
