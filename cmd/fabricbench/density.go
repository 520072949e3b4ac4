package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns"
)

// The density section grows each agent (eBPF on h1, kernel datapath on
// k1) to each N of -density-n sandboxes, every one running a command
// (sleep) and so supervised and served by the embedded DNS, and reports
// what the agent costs per sandbox: resident memory, Go heap and stacks,
// goroutines and OS threads, read from /proc and the agent's own metrics
// endpoint; and the set-up time of one more sandbox with a command.
const (
	defaultDensityN = "10,300,1000"
	quickDensityN   = "10,100"
	densitySetupN   = 20 // timed creates per N and repetition
	metricsAddr     = "127.0.0.1:9475"
)

// densityHost is one agent the section grows.
type densityHost struct {
	label, short, tag string
	client            *api.Client
	agent             *proc
	skip              string
	track, untrack    func(string)
	pg                *pinger
	fillers           []string
	timed             int
}

// agentStats reads the agent's resident memory and threads from /proc and
// its goroutines, heap and stack from its metrics endpoint (served in the
// host namespace at nsPath).
func agentStats(ctx context.Context, pid int, nsPath string) (map[string]float64, error) {
	m := map[string]float64{}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil || strings.TrimSpace(string(comm)) != "fabricd" {
		return nil, fmt.Errorf("process %d is not fabricd (%q, %v)", pid, comm, err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			m["rss"] = v * 1024
		case "Threads:":
			m["threads"] = v
		}
	}
	metrics, err := scrapeMetrics(ctx, nsPath)
	if err != nil {
		return m, err
	}
	for k, name := range map[string]string{"goroutines": "go_goroutines", "heap": "go_memstats_heap_inuse_bytes",
		"stack": "go_memstats_stack_inuse_bytes", "gothreads": "go_threads"} {
		if v, ok := metrics[name]; ok {
			m[k] = v
		}
	}
	return m, nil
}

// scrapeMetrics fetches the agent's /metrics from inside nsPath (the
// connection is made on a thread in that namespace) and returns the
// unlabelled samples.
func scrapeMetrics(ctx context.Context, nsPath string) (map[string]float64, error) {
	var c net.Conn
	err := netns.Do(nsPath, func() error {
		var err error
		c, err = net.DialTimeout("tcp", metricsAddr, 5*time.Second)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	} else {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	if _, err := fmt.Fprintf(c, "GET /metrics HTTP/1.0\r\nHost: %s\r\n\r\n", metricsAddr); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: %s", resp.Status)
	}
	return parseMetrics(bufio.NewScanner(resp.Body))
}

// parseMetrics reads the samples without labels of a Prometheus text
// exposition.
func parseMetrics(sc *bufio.Scanner) (map[string]float64, error) {
	out := map[string]float64{}
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || strings.ContainsRune(line, '{') {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		if v, err := strconv.ParseFloat(f[1], 64); err == nil {
			out[f[0]] = v
		}
	}
	return out, sc.Err()
}

// fillDensity adds sandboxes with a command until the host has n
// sandboxes.
func (l *Lab) fillDensity(ctx context.Context, h *densityHost, n int) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	sbs, err := h.client.Sandboxes(cctx)
	cancel()
	if err != nil {
		return fmt.Errorf("%s: list sandboxes: %w", h.label, err)
	}
	for have := len(sbs); have < n; have++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		name := l.ns(fmt.Sprintf("zd%s%d", h.tag, len(h.fillers)))
		h.track(name)
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := h.client.CreateSandbox(cctx, api.SandboxCreate{Name: name, Command: []string{"sleep", "3600"}})
		cancel()
		if err != nil {
			return fmt.Errorf("sandbox %s: %w", name, err)
		}
		h.fillers = append(h.fillers, name)
		if (have+1)%100 == 0 {
			fmt.Fprintf(os.Stderr, "  density: %s: %d sandboxes\n", h.label, have+1)
		}
	}
	return nil
}

// timedDensityCreates creates n sandboxes with a command one after the
// other, times each from the call until its address answers ping from the
// host, and removes them again.
func (l *Lab) timedDensityCreates(ctx context.Context, h *densityHost, n int) ([]float64, error) {
	var ready []float64
	var errs []error
	for i := 0; i < n && ctx.Err() == nil; i++ {
		name := l.ns(fmt.Sprintf("zu%s%d", h.tag, h.timed))
		h.timed++
		h.track(name)
		took, err := timedCreate(ctx, h.client, h.pg, api.SandboxCreate{Name: name, Command: []string{"sleep", "3600"}})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		} else {
			ready = append(ready, took)
		}
		if err := removeTimed(h.client, h.untrack, name); err != nil {
			errs = append(errs, err)
		}
	}
	return ready, errors.Join(errs...)
}

func (l *Lab) densityHosts(ctx context.Context) []*densityHost {
	eb := &densityHost{label: "fabric " + l.datapathName(ctx) + " (h1)", short: "h1", tag: "e", client: l.client,
		agent: l.agent, skip: l.fabricSkip(), track: l.trackSandbox, untrack: l.untrackSandbox}
	kh := l.kernelHost(ctx)
	kn := &densityHost{label: "fabric " + kh.datapathLabel() + " (k1)", short: "k1", tag: "k", client: kh.client,
		agent: kh.agent, skip: kh.skip(), track: kh.track, untrack: kh.untrack}
	return []*densityHost{eb, kn}
}

// sectionDensity: both agents grown to each N in parallel, then measured
// one after the other.
func (l *Lab) sectionDensity(ctx context.Context) error {
	hosts := l.densityHosts(ctx)
	for _, h := range hosts {
		if h.skip != "" {
			continue
		}
		if h.pg, h.skip = l.hostPinger(h.short); h.pg != nil {
			defer h.pg.close()
		}
	}
	defer l.removeDensityFillers(hosts)
	var rows []*result
	first := map[*densityHost]*result{}
	for _, n := range l.o.densityN {
		errs := make([]error, len(hosts))
		var wg sync.WaitGroup
		for i, h := range hosts {
			if h.skip == "" {
				wg.Go(func() { errs[i] = l.fillDensity(ctx, h, n) })
			}
		}
		wg.Wait()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		for i, h := range hosts {
			r := &result{spec: spec{name: fmt.Sprintf("%s, N=%d", h.label, n), skip: h.skip}, vals: map[string][]float64{}}
			rows = append(rows, r)
			if errs[i] != nil {
				h.skip = fmt.Sprintf("could not grow to %d sandboxes: %s", n, lastLines(errs[i].Error(), 1))
				r.skip = h.skip
			}
			if h.skip != "" {
				continue
			}
			l.measureDensity(ctx, h, n, r)
			if first[h] == nil {
				first[h] = r
			}
		}
	}
	l.printDensity(rows, first)
	return nil
}

// measureDensity fills r with host h's figures at n sandboxes.
func (l *Lab) measureDensity(ctx context.Context, h *densityHost, n int, r *result) {
	fmt.Fprintf(os.Stderr, "  density: measuring %s at N=%d\n", h.label, n)
	r.runs = 1
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	sbs, err := h.client.Sandboxes(cctx)
	cancel()
	if err == nil {
		r.vals["n"] = []float64{float64(len(sbs))}
	}
	st, err := agentStats(ctx, h.agent.cmd.Process.Pid, l.nsPath(h.short))
	if err != nil {
		r.errs = append(r.errs, err.Error())
	}
	for k, v := range st {
		r.vals[k] = []float64{v}
	}
	var pool []float64
	_, _ = l.timedDensityCreates(ctx, h, 2) // warm-up
	for range max(1, l.o.reps) {
		ready, err := l.timedDensityCreates(ctx, h, densitySetupN)
		pool = append(pool, ready...)
		if err != nil {
			r.errs = append(r.errs, err.Error())
		}
	}
	r.vals["su50"] = []float64{percentile(pool, 50)}
	r.vals["su99"] = []float64{percentile(pool, 99)}
}

func (l *Lab) removeDensityFillers(hosts []*densityHost) {
	var wg sync.WaitGroup
	for _, h := range hosts {
		if len(h.fillers) == 0 {
			continue
		}
		wg.Go(func() {
			t0 := time.Now()
			var failed int
			for _, name := range h.fillers {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				if err := h.client.RemoveSandbox(ctx, name); err != nil {
					failed++
				} else {
					h.untrack(name)
				}
				cancel()
			}
			fmt.Fprintf(os.Stderr, "  density: %s: removed %d sandboxes in %.1f s (%d failed, left to the cleanup)\n",
				h.label, len(h.fillers)-failed, time.Since(t0).Seconds(), failed)
			h.fillers = nil
		})
	}
	wg.Wait()
}

// printDensity prints the table: per-sandbox figures are the growth from
// the same agent's first N, divided by the sandboxes added.
func (l *Lab) printDensity(rows []*result, first map[*densityHost]*result) {
	refOf := map[*result]*result{}
	for _, ref := range first {
		for _, r := range rows {
			if strings.HasPrefix(r.name, strings.SplitN(ref.name, ", N=", 2)[0]+", N=") {
				refOf[r] = ref
			}
		}
	}
	one := func(head, k, f string, scale float64) column {
		return column{head, func(r *result) string {
			if v := r.med(k); !math.IsNaN(v) {
				return fmt.Sprintf(f, v/scale)
			}
			if r.skip != "" {
				return "n/a"
			}
			return "–"
		}}
	}
	perSandbox := func(head, k string) column {
		return column{head, func(r *result) string {
			ref := refOf[r]
			if ref == nil || ref == r {
				return "–"
			}
			d := r.med("n") - ref.med("n")
			v := (r.med(k) - ref.med(k)) / d / 1024
			if math.IsNaN(v) || d <= 0 {
				return "–"
			}
			return fmt.Sprintf("%.1f", v)
		}}
	}
	ratio := column{fmt.Sprintf("p50 × N=%d", l.o.densityN[0]), func(r *result) string { return ratioCol("", "su50", refOf[r]).cell(r) }}
	notes := []string{
		"N: the agent's sandboxes, each running `sleep 3600` (supervised, with its own resolver on 127.0.0.11); the h1 agent also has the lab's own sandboxes.",
		"RSS and threads from /proc/PID/status; heap (in use), stack (in use) and goroutines from the agent's /metrics. Per-sandbox columns: growth since the same agent's first N, divided by the sandboxes added.",
		fmt.Sprintf("set-up: %d API CreateSandbox calls with a command per repetition (%d repetitions), from the call to the address answering ping from the host, each removed again; p50/p99 over all.", densitySetupN, max(1, l.o.reps)),
	}
	last := l.o.densityN[len(l.o.densityN)-1]
	for _, r := range rows {
		ref := refOf[r]
		if r.skip != "" || ref == nil || ref == r || !strings.HasSuffix(r.name, fmt.Sprintf("N=%d", last)) {
			continue
		}
		rss := (r.med("rss") - ref.med("rss")) / (r.med("n") - ref.med("n")) / 1024
		notes = append(notes, fmt.Sprintf("issue targets, %s: %s; %s; %s.", r.name,
			target("RSS per sandbox", rss, 20, false, " KiB"),
			target("OS threads", r.med("threads"), 32, false, ""),
			target("set-up p50 vs first N", r.med("su50")/ref.med("su50"), 1.05, false, "×")))
	}
	printTable("density: one agent's cost per sandbox with a command, N sandboxes on one host",
		[]column{
			one("sandboxes", "n", "%.0f", 1),
			one("RSS MiB", "rss", "%.1f", 1<<20),
			perSandbox("RSS KiB/sandbox", "rss"),
			one("heap MiB", "heap", "%.1f", 1<<20),
			perSandbox("heap KiB/sandbox", "heap"),
			one("stack MiB", "stack", "%.2f", 1<<20),
			one("goroutines", "goroutines", "%.0f", 1),
			one("OS threads", "threads", "%.0f", 1),
			one("set-up p50 ms", "su50", "%.1f", 1),
			one("set-up p99 ms", "su99", "%.1f", 1),
			ratio,
		}, rows, notes...)
}
