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
	"sync/atomic"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath"
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
	made, timed       int  // fillers and timed sandboxes named so far
	bridged           bool // the kernel datapath: its sandboxes hang off a bridge
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
		name := l.ns(fmt.Sprintf("zd%s%d", h.tag, h.made))
		h.made++
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
		agent: kh.agent, skip: kh.skip(), track: kh.track, untrack: kh.untrack, bridged: true}
	return []*densityHost{eb, kn}
}

// densityRows are one host's rows: fabric's and the kernel reference's at
// the smallest and the largest N, and fabric's at the sizes between
// (measured once, on the first way up).
type densityRows struct {
	small, big       *result
	refSmall, refBig *result
	mid              []*result
}

// sectionDensity: both agents grown in parallel, then measured one after
// the other. Each repetition measures the smallest N and the largest
// (grow, measure, shrink back by removing the fillers), so the ratio of
// the two is taken within a repetition, minutes apart at most, and the
// reported ratio is the median of the per-repetition ratios.
func (l *Lab) sectionDensity(ctx context.Context) error {
	t0 := time.Now()
	hosts := l.densityHosts(ctx)
	refs := map[*densityHost]*kernelRef{}
	for _, h := range hosts {
		if h.skip != "" {
			continue
		}
		if h.pg, h.skip = l.hostPinger(h.short); h.pg == nil {
			continue
		}
		defer h.pg.close()
		k, err := newKernelRef(h.tag, l.nsPath(h.short), h.pg, h.bridged, l.ns)
		if err != nil {
			fmt.Fprintf(os.Stderr, "  density: %s: no kernel reference: %v\n", h.label, err)
			continue
		}
		defer k.close()
		refs[h] = k
	}
	defer l.removeDensityFillers(hosts)
	sizes := l.o.densityN
	small, big := sizes[0], sizes[len(sizes)-1]
	rows := map[*densityHost]*densityRows{}
	newRow := func(name, skip string) *result {
		return &result{spec: spec{name: name, skip: skip}, vals: map[string][]float64{}}
	}
	for _, h := range hosts {
		dr := &densityRows{small: newRow(fmt.Sprintf("%s, N=%d", h.label, small), h.skip)}
		for _, n := range sizes[1 : len(sizes)-1] {
			dr.mid = append(dr.mid, newRow(fmt.Sprintf("%s, N=%d", h.label, n), h.skip))
		}
		if big != small {
			dr.big = newRow(fmt.Sprintf("%s, N=%d", h.label, big), h.skip)
		}
		refName := "kernel steps, no fabric (" + h.short + ")"
		if refs[h] == nil {
			refName = "kernel steps, no fabric (" + h.short + "): not measured"
		}
		dr.refSmall = newRow(fmt.Sprintf("%s, N=%d", refName, small), h.skip)
		if big != small {
			dr.refBig = newRow(fmt.Sprintf("%s, N=%d", refName, big), h.skip)
		}
		rows[h] = dr
	}
	reps := max(1, l.o.reps)
	for rep := range reps {
		// The agent's memory at the smallest N is taken on the way up only:
		// after a shrink the Go runtime keeps what it had, and the growth
		// per sandbox would read low.
		if err := l.densityAt(ctx, hosts, small, func(h *densityHost) (*result, *result) { return rows[h].small, rows[h].refSmall }, refs, rep == 0); err != nil {
			return err
		}
		if big == small {
			continue
		}
		if rep == 0 {
			for i, n := range sizes[1 : len(sizes)-1] {
				if err := l.densityAt(ctx, hosts, n, func(h *densityHost) (*result, *result) { return rows[h].mid[i], nil }, nil, true); err != nil {
					return err
				}
			}
		}
		if err := l.densityAt(ctx, hosts, big, func(h *densityHost) (*result, *result) { return rows[h].big, rows[h].refBig }, refs, true); err != nil {
			return err
		}
		if rep < reps-1 {
			l.shrinkDensity(ctx, hosts, small, func(h *densityHost) *result { return rows[h].big })
		}
	}
	fmt.Fprintf(os.Stderr, "  density: measured in %.0f s\n", time.Since(t0).Seconds())
	l.printDensity(hosts, rows, reps)
	return nil
}

// densityAt grows the hosts to n sandboxes in parallel and measures each
// in turn into the rows rowOf gives it (one repetition's figures); with
// refs, the kernel reference is timed alongside. stats says whether the
// agent's memory and thread figures are taken too.
func (l *Lab) densityAt(ctx context.Context, hosts []*densityHost, n int, rowOf func(*densityHost) (*result, *result), refs map[*densityHost]*kernelRef, stats bool) error {
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
		if errs[i] != nil && h.skip == "" {
			h.skip = fmt.Sprintf("could not grow to %d sandboxes: %s", n, lastLines(errs[i].Error(), 1))
		}
		r, ref := rowOf(h)
		if h.skip != "" {
			r.skip = h.skip
			if ref != nil {
				ref.skip = h.skip
			}
			continue
		}
		var k *kernelRef
		if refs != nil {
			k = refs[h]
		}
		l.measureDensity(ctx, h, n, r, ref, k, stats)
	}
	return nil
}

// measureDensity adds one repetition's figures of host h at n sandboxes to
// r (and the kernel reference's to ref): the set-up p50 of densitySetupN
// creates, fabric's and the reference's alternating, and with stats the
// agent's memory and threads.
func (l *Lab) measureDensity(ctx context.Context, h *densityHost, n int, r, ref *result, k *kernelRef, stats bool) {
	fmt.Fprintf(os.Stderr, "  density: measuring %s at N=%d\n", h.label, n)
	r.runs++
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	sbs, err := h.client.Sandboxes(cctx)
	cancel()
	if err == nil {
		r.vals["n"] = append(r.vals["n"], float64(len(sbs)))
	}
	if stats {
		st, err := agentStats(ctx, h.agent.cmd.Process.Pid, l.nsPath(h.short))
		if err != nil {
			r.errs = append(r.errs, err.Error())
		}
		for key, v := range st {
			r.vals[key] = append(r.vals[key], v)
		}
	}
	_, _ = l.timedDensityCreates(ctx, h, 2) // warm-up
	var pool, refPool []float64
	for range densitySetupN {
		ready, err := l.timedDensityCreates(ctx, h, 1)
		pool = append(pool, ready...)
		if err != nil {
			r.errs = append(r.errs, err.Error())
		}
		if k == nil || ref == nil {
			continue
		}
		if took, err := k.timedSetup(ctx); err != nil {
			ref.errs = append(ref.errs, err.Error())
		} else {
			refPool = append(refPool, took)
		}
	}
	r.vals["su50"] = append(r.vals["su50"], nanIfEmpty(pool, 50))
	r.vals["su99"] = append(r.vals["su99"], nanIfEmpty(pool, 99))
	if k != nil && ref != nil {
		ref.runs++
		ref.vals["n"] = append(ref.vals["n"], float64(n))
		ref.vals["su50"] = append(ref.vals["su50"], nanIfEmpty(refPool, 50))
		ref.vals["su99"] = append(ref.vals["su99"], nanIfEmpty(refPool, 99))
	}
}

// nanIfEmpty is the p-th percentile of xs, NaN (no measurement, kept in
// its repetition's place) when there is none.
func nanIfEmpty(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	return percentile(xs, p)
}

// shrinkDensity brings the hosts back to n sandboxes in parallel by
// removing their newest fillers, and records the removals' p50 in the row
// rowOf gives.
func (l *Lab) shrinkDensity(ctx context.Context, hosts []*densityHost, n int, rowOf func(*densityHost) *result) {
	var wg sync.WaitGroup
	for _, h := range hosts {
		if h.skip != "" || len(h.fillers) == 0 {
			continue
		}
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			sbs, err := h.client.Sandboxes(cctx)
			cancel()
			if err != nil {
				return
			}
			cut := len(h.fillers) - shrinkCount(len(sbs), n, len(h.fillers))
			took, failed := removeFillers(h, h.fillers[cut:])
			h.fillers = append(h.fillers[:cut], failed...)
			waitPairsGone(l.nsPath(h.short), h.label)
			if r := rowOf(h); r != nil && len(took) > 0 {
				r.vals["rm50"] = append(r.vals["rm50"], percentile(took, 50))
			}
		})
	}
	wg.Wait()
}

// removeFillers removes the named fillers one after the other, logs how
// long it took, and returns each removal's time (ms) and the names it
// could not remove.
func removeFillers(h *densityHost, names []string) (took []float64, failed []string) {
	t0 := time.Now()
	for _, name := range names {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		t := time.Now()
		if err := h.client.RemoveSandbox(ctx, name); err != nil {
			failed = append(failed, name)
		} else {
			took = append(took, ms(time.Since(t)))
			h.untrack(name)
		}
		cancel()
	}
	fmt.Fprintf(os.Stderr, "  density: %s: removed %d sandboxes in %.1f s (p50 %.1f ms per removal; %d failed)\n",
		h.label, len(took), time.Since(t0).Seconds(), nanIfEmpty(took, 50), len(failed))
	return took, failed
}

// pairsGoneLimit bounds waitPairsGone.
const pairsGoneLimit = 2 * time.Minute

// waitPairsGone waits until the kernel has deleted the veth pairs of the
// sandboxes removed from the host namespace at nsPath: a removed sandbox's
// pair is only cut off (host side down) and goes with its namespace, in
// the kernel's background clean-up, which must not overlap the next
// measurement. It logs how long that took.
func waitPairsGone(nsPath, label string) {
	nl, err := netns.HandleAt(nsPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "  density: %s: cannot watch the clean-up: %v\n", label, err)
		return
	}
	defer nl.Close()
	t0 := time.Now()
	var left atomic.Int64 // -1: the last listing failed
	pollUntil(t0.Add(pairsGoneLimit), func() bool {
		links, err := nl.LinkList()
		if err != nil {
			left.Store(-1)
			return false
		}
		n := 0
		for _, link := range links {
			a := link.Attrs()
			if link.Type() == "veth" && strings.HasPrefix(a.Alias, datapath.OwnerPrefix) && a.Flags&net.FlagUp == 0 {
				n++
			}
		}
		left.Store(int64(n))
		return n == 0
	})
	if left.Load() < 0 {
		fmt.Fprintf(os.Stderr, "  density: %s: cannot list the links to watch the clean-up\n", label)
		return
	}
	fmt.Fprintf(os.Stderr, "  density: %s: the kernel deleted the removed sandboxes' pairs within %.1f s (%d left)\n",
		label, time.Since(t0).Seconds(), left.Load())
}

func (l *Lab) removeDensityFillers(hosts []*densityHost) {
	var wg sync.WaitGroup
	for _, h := range hosts {
		if len(h.fillers) == 0 {
			continue
		}
		wg.Go(func() {
			_, failed := removeFillers(h, h.fillers)
			if len(failed) > 0 {
				fmt.Fprintf(os.Stderr, "  density: %s: %d left to the cleanup\n", h.label, len(failed))
			}
			h.fillers = nil
		})
	}
	wg.Wait()
}
