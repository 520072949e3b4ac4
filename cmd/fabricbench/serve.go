package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// serveMain is the server helper that fabricbench re-executes inside every
// namespace that serves traffic (h2, c1a, c1b, and the fabric sandboxes fa
// and fb, where `fabricctl run -d` starts it): an iperf3 server, a sockperf
// TCP server and a small HTTP server answering "ok" on /. iperf3 and sockperf
// die with the helper (PDEATHSIG), and the helper ends by itself after
// -life, so nothing outlives a run for long even if cleanup was skipped.
func serveMain(args []string) int {
	fs := flag.NewFlagSet("fabricbench "+serveArg, flag.ContinueOnError)
	httpPort := fs.Int("http", portHTTP, "HTTP port (0: none)")
	perfPort := fs.Int("iperf", portPerf, "iperf3 server port (0: none)")
	latPort := fs.Int("sockperf", portLat, "sockperf TCP server port (0: none)")
	life := fs.Duration("life", 4*time.Hour, "exit after this long")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *life)
	defer cancel()

	var kids []*exec.Cmd
	start := func(argv ...string) error {
		c := exec.Command(argv[0], argv[1:]...)
		c.Stdout, c.Stderr = os.Stdout, os.Stderr
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := c.Start(); err != nil {
			return err
		}
		kids = append(kids, c)
		go func() { _ = c.Wait(); cancel() }() // a dead server ends the helper: loud, not silent
		return nil
	}
	defer func() {
		for _, k := range kids {
			_ = k.Process.Kill()
		}
	}()
	if *perfPort > 0 {
		if err := start("iperf3", "-s", "-p", strconv.Itoa(*perfPort)); err != nil {
			fmt.Fprintf(os.Stderr, "start iperf3: %v\n", err)
			return 1
		}
	}
	if *latPort > 0 {
		if err := start("sockperf", "server", "--tcp", "-i", "0.0.0.0", "-p", strconv.Itoa(*latPort)); err != nil {
			fmt.Fprintf(os.Stderr, "start sockperf: %v\n", err)
			return 1
		}
	}
	if *httpPort > 0 {
		mux := http.NewServeMux()
		mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			_, _ = w.Write([]byte("ok\n"))
		})
		srv := &http.Server{Addr: ":" + strconv.Itoa(*httpPort), Handler: mux,
			ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 30 * time.Second}
		go func() {
			if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
				fmt.Fprintf(os.Stderr, "http: %v\n", err)
				cancel()
			}
		}()
		defer srv.Close()
	}
	<-ctx.Done()
	return 0
}
