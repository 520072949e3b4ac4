package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry builds a registry with fabric's collectors for the non-nil
// sources, fabric_build_info, and the Go runtime and process collectors.
// version is the agent's version and datapath the datapath in use (as
// `fabricctl status` names it). A private registry, not the global one, so
// that tests and several agents in one process do not collide.
func NewRegistry(version, datapath string, s Sources) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "fabric_build_info",
		Help: "Always 1; the labels say which fabric build runs, and with which datapath.",
		ConstLabels: prometheus.Labels{
			"version": version, "go_version": runtime.Version(), "datapath": datapath,
		},
	})
	info.Set(1)
	reg.MustRegister(info,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if s.Datapath != nil {
		reg.MustRegister(newDatapathCollector(s.Datapath))
	}
	if s.Agent != nil {
		reg.MustRegister(newAgentCollector(s.Agent))
	}
	if s.Cluster != nil {
		reg.MustRegister(newClusterCollector(s.Cluster))
	}
	if s.DNS != nil {
		reg.MustRegister(newDNSCollector(s.DNS))
	}
	if s.API != nil {
		reg.MustRegister(s.API)
	}
	return reg
}

// describeAll sends each of a collector's descriptions to ch.
func describeAll(ch chan<- *prometheus.Desc, descs ...*prometheus.Desc) {
	for _, d := range descs {
		ch <- d
	}
}

// Handler serves reg in the Prometheus exposition format. A collector that
// fails does not fail the scrape: what could be gathered is served and the
// error is logged (and counted in promhttp_metric_handler_errors_total).
func Handler(reg *prometheus.Registry, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.Default()
	}
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      errorLog{log},
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      reg,
		// Scrapes read BPF maps; a few at once is plenty, more are a
		// misconfigured scraper.
		MaxRequestsInFlight: 4,
	})
}

// Serve serves h at /metrics on ln until ctx ends, then shuts the server
// down and returns nil. /healthz answers 200 "ok" while the agent runs (a
// liveness check for load balancers and orchestrators; `fabricctl status`
// says whether it is healthy).
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := srv.Shutdown(shut)
		<-errc // the Serve goroutine has returned ErrServerClosed
		if err != nil {
			return fmt.Errorf("shut down metrics server: %w", err)
		}
		return nil
	case err := <-errc:
		return fmt.Errorf("serve metrics on %s: %w", ln.Addr(), err)
	}
}

// errorLog hands promhttp's errors to slog.
type errorLog struct{ log *slog.Logger }

func (e errorLog) Println(v ...any) { e.log.Warn("metrics scrape", "error", fmt.Sprint(v...)) }

// unixSeconds is how Prometheus wants timestamps as values.
func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }
