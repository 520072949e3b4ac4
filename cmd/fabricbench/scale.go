package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// The scale section grows the endpoints of a fabric host to each N of
// -scale-n with filler sandboxes (no command; each publishes one TCP host
// port, so N endpoints also means about N published ports) and measures,
// at each N, what the issue asks to stay flat: a TCP stream and the new
// connection rate through a published port (fa's 9080/9081 on h1, ka's on
// k1, reached from h2), and the set-up time of one more endpoint. A control
// row measures the same stream and connection rate through the kernel's
// own published port on h1 (nftables DNAT to c1a on br0), which no fabric
// endpoint is on: what it loses as N grows is the host's, not fabric's.
const (
	defaultScaleN = "10,100,1000"
	quickScaleN   = "10,100"
	maxScaleN     = 2000
	scaleSetupN   = 20 // timed creates per row and repetition
	// Host ports of the scale sandboxes, clear of every other section's
	// (8080–8083, 9080–9081): fillers from hpFillBase up, the timed ones
	// cycle through hpTimedBase…+1999.
	hpFillBase  = 20000
	hpTimedBase = 24000
)

// parseScaleN reads -scale-n: ascending endpoint counts, 2 to maxScaleN.
func parseScaleN(s string) ([]int, error) {
	var ns []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a number: %w", f, err)
		}
		if n < 2 || n > maxScaleN {
			return nil, fmt.Errorf("%d: want 2 to %d endpoints", n, maxScaleN)
		}
		if len(ns) > 0 && n <= ns[len(ns)-1] {
			return nil, fmt.Errorf("%d after %d: want ascending counts", n, ns[len(ns)-1])
		}
		ns = append(ns, n)
	}
	return ns, nil
}

// scaleHost is one agent whose endpoints the section grows.
type scaleHost struct {
	label          string // datapath, for the row names
	short          string // host namespace (h1, k1): where the pinger runs
	tag            string // in sandbox names, tells the hosts apart
	client         *api.Client
	pubAddr        string // the host's address as h2 reaches it
	perfPort       int    // published iperf3 port
	httpPort       int    // published HTTP port
	control        bool   // the kernel DNAT control: not grown, no set-up
	skip           string
	track, untrack func(string)

	pg       *pinger
	fillers  []string
	timed    int // timed sandboxes made so far: their names and ports
	failedAt int // the N it could not grow to (0: none)
}

// fillTo adds filler sandboxes until the host has n endpoints (never
// fewer than it has) and returns how long that took.
func (l *Lab) fillTo(ctx context.Context, h *scaleHost, n int) (time.Duration, error) {
	t0 := time.Now()
	have, _, err := h.count(ctx)
	if err != nil {
		return 0, err
	}
	for ; have < n; have++ {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		i := len(h.fillers)
		name := l.ns(fmt.Sprintf("zf%s%d", h.tag, i))
		h.track(name)
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := h.client.CreateSandbox(cctx, api.SandboxCreate{Name: name,
			Ports: []string{fmt.Sprintf("%d:%d", hpFillBase+i, portHTTP)}})
		cancel()
		if err != nil {
			return 0, fmt.Errorf("filler %s: %w", name, err)
		}
		h.fillers = append(h.fillers, name)
		if (have+1)%100 == 0 {
			fmt.Fprintf(os.Stderr, "  scale: %s: %d endpoints\n", h.label, have+1)
		}
	}
	return time.Since(t0), nil
}

// count returns the host's endpoints and published ports.
func (h *scaleHost) count(ctx context.Context) (endpoints, ports int, err error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	eps, err := h.client.Endpoints(cctx)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: list endpoints: %w", h.label, err)
	}
	sbs, err := h.client.Sandboxes(cctx)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: list sandboxes: %w", h.label, err)
	}
	for _, sb := range sbs {
		ports += len(sb.Ports)
	}
	return len(eps), ports, nil
}

// removeFillers removes the host's fillers and returns how long it took.
func (l *Lab) removeFillers(h *scaleHost) (time.Duration, error) {
	t0 := time.Now()
	var errs []error
	for _, name := range h.fillers {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := h.client.RemoveSandbox(ctx, name)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", name, err))
			if len(errs) > 3 {
				break // leave the rest to the cleanup
			}
			continue
		}
		h.untrack(name)
	}
	h.fillers = nil
	return time.Since(t0), errors.Join(errs...)
}

// timedCreates creates n sandboxes one after the other, each publishing a
// port like the fillers, times each from the create call until its
// address answers ping from the host, then removes them again (so the
// host stays at its N). It returns the times in ms.
func (l *Lab) timedCreates(ctx context.Context, h *scaleHost, n int) ([]float64, error) {
	var ready []float64
	var made []string
	var errs []error
	for i := 0; i < n && ctx.Err() == nil; i++ {
		name := l.ns(fmt.Sprintf("zt%s%d", h.tag, h.timed))
		port := hpTimedBase + h.timed%2000
		h.timed++
		h.track(name)
		took, err := timedCreate(ctx, h.client, h.pg, api.SandboxCreate{Name: name,
			Ports: []string{fmt.Sprintf("%d:%d", port, portHTTP)}})
		made = append(made, name)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		} else {
			ready = append(ready, took)
		}
	}
	for _, name := range made {
		if err := removeTimed(h.client, h.untrack, name); err != nil {
			errs = append(errs, err)
		}
	}
	return ready, errors.Join(errs...)
}

// scaleMeasure measures host h once: TCP stream and new connections/s
// from h2 through its published ports, then scaleSetupN timed creates,
// whose times go to pool (p50/p99 are taken over all repetitions). The
// first call is runAlternating's warm-up: two creates, not pooled.
func (l *Lab) scaleMeasure(h *scaleHost, pool *[]float64) func(context.Context, int) (map[string]float64, error) {
	calls := 0
	h2 := l.nsPath("h2")
	return func(ctx context.Context, secs int) (map[string]float64, error) {
		calls++
		m := map[string]float64{}
		var errs []error
		if g, err := l.iperf(ctx, h2, h.pubAddr, h.perfPort, secs); err != nil {
			errs = append(errs, err)
		} else {
			m["gbps"] = g
		}
		url := fmt.Sprintf("http://%s:%d/", h.pubAddr, h.httpPort)
		if r, err := l.wrk(ctx, h2, url, secs); err != nil {
			errs = append(errs, err)
		} else {
			m["rps"] = r.rps
		}
		if h.control {
			return m, errors.Join(errs...)
		}
		n := scaleSetupN
		if calls == 1 {
			n = 2
		}
		ready, err := l.timedCreates(ctx, h, n)
		if err != nil {
			errs = append(errs, err)
		}
		if calls > 1 {
			*pool = append(*pool, ready...)
		}
		return m, errors.Join(errs...)
	}
}

// scaleHosts returns the eBPF agent on h1, the kernel-datapath agent on k1
// and the kernel DNAT control on h1 as the section sees them; a host that
// cannot run has skip set.
func (l *Lab) scaleHosts(ctx context.Context) []*scaleHost {
	eb := &scaleHost{label: "fabric " + l.datapathName(ctx) + " (h1)", short: "h1", tag: "e", client: l.client,
		pubAddr: h1IP, perfPort: hpFabric, httpPort: hpFabHTTP, skip: l.fabricSkip(), track: l.trackSandbox, untrack: l.untrackSandbox}
	kh := l.kernelHost(ctx)
	kn := &scaleHost{label: "fabric " + kh.datapathLabel() + " (k1)", short: "k1", tag: "k", client: kh.client,
		pubAddr: k1IP, perfPort: hpFabric, httpPort: hpFabHTTP, skip: kh.skip(), track: kh.track, untrack: kh.untrack}
	ctl := &scaleHost{label: "control: nftables DNAT on h1 → c1a (ref)", short: "h1", pubAddr: h1IP,
		perfPort: hpDNAT, httpPort: hpDNATHTTP, control: true}
	return []*scaleHost{eb, kn, ctl}
}

// sectionScale: for each N of -scale-n, both agents are grown to N
// endpoints (in parallel: the growing is not measured), then each is
// measured, alternating between them, and every figure is given as a
// ratio to the same agent's figure at the first N.
func (l *Lab) sectionScale(ctx context.Context) error {
	hosts := l.scaleHosts(ctx)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	for _, h := range hosts {
		if h.skip != "" || h.control {
			continue
		}
		if h.pg, h.skip = l.hostPinger(h.short); h.pg != nil {
			defer h.pg.close()
		}
	}
	defer l.removeAllFillers(hosts)

	rows := make([][]*result, len(hosts)) // [host][N]
	var notes []string
	for _, n := range l.o.scaleN {
		note := l.growAllTo(ctx, hosts, n)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if note != "" {
			notes = append(notes, note)
		}
		res := l.measureScale(ctx, hosts, n)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		for i := range hosts {
			rows[i] = append(rows[i], res[i])
		}
	}
	l.printScale(hosts, rows, notes)
	return nil
}

// removeAllFillers brings every host back to where the section started,
// all hosts at once.
func (l *Lab) removeAllFillers(hosts []*scaleHost) {
	var wg sync.WaitGroup
	for _, h := range hosts {
		if len(h.fillers) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := len(h.fillers)
			d, err := l.removeFillers(h)
			if err != nil {
				fmt.Fprintf(os.Stderr, "  scale: %s: removing fillers: %v\n", h.label, err)
			} else {
				fmt.Fprintf(os.Stderr, "  scale: %s: removed %d fillers in %.1f s\n", h.label, n, d.Seconds())
			}
		}()
	}
	wg.Wait()
}

// growAllTo grows every measured host to n endpoints in parallel; a host
// that fails is skipped from then on. It returns the note that says how
// long growing took ("" if no host grew).
func (l *Lab) growAllTo(ctx context.Context, hosts []*scaleHost, n int) string {
	fill := make([]time.Duration, len(hosts))
	fillErr := make([]error, len(hosts))
	var wg sync.WaitGroup
	for i, h := range hosts {
		if h.skip != "" || h.control {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			fill[i], fillErr[i] = l.fillTo(ctx, h, n)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return ""
	}
	var fillNote []string
	for i, h := range hosts {
		switch {
		case fillErr[i] != nil:
			h.skip = fmt.Sprintf("could not grow to %d endpoints: %s", n, lastLines(fillErr[i].Error(), 1))
			h.failedAt = n
		case h.failedAt != 0:
			// The reason is in the note of the first N it failed at.
			h.skip = fmt.Sprintf("could not grow to %d endpoints", h.failedAt)
		case h.skip == "" && !h.control:
			fillNote = append(fillNote, fmt.Sprintf("%s %.1f s", h.label, fill[i].Seconds()))
		}
	}
	if len(fillNote) == 0 {
		return ""
	}
	return fmt.Sprintf("growing to N=%d (in parallel, not measured): %s.", n, strings.Join(fillNote, ", "))
}

// measureScale measures every host at n endpoints, alternating between
// them, and returns one result per host.
func (l *Lab) measureScale(ctx context.Context, hosts []*scaleHost, n int) []*result {
	specs := make([]spec, len(hosts))
	pools := make([][]float64, len(hosts))
	for i, h := range hosts {
		specs[i] = spec{name: fmt.Sprintf("%s, N=%d", h.label, n), skip: h.skip}
		if h.skip == "" {
			specs[i].fn = l.scaleMeasure(h, &pools[i])
		}
	}
	res := runAlternating(ctx, fmt.Sprintf("scale N=%d", n), l.secs(), l.o.reps, specs)
	if ctx.Err() != nil {
		return nil
	}
	for i, h := range hosts {
		r := res[i]
		if h.skip == "" && !h.control {
			r.vals["su50"] = []float64{percentile(pools[i], 50)}
			r.vals["su99"] = []float64{percentile(pools[i], 99)}
			if eps, ports, err := h.count(ctx); err == nil {
				r.vals["eps"], r.vals["ports"] = []float64{float64(eps)}, []float64{float64(ports)}
			}
		}
	}
	return res
}

// printScale prints the section's table: rows[host][N], each figure also
// as a ratio to the same host's at the first N.
func (l *Lab) printScale(hosts []*scaleHost, rows [][]*result, notes []string) {
	var all []*result
	ref := map[*result]*result{}
	for _, hr := range rows {
		for _, r := range hr {
			ref[r] = hr[0]
			all = append(all, r)
		}
	}
	first := l.o.scaleN[0]
	vsFirst := func(what, k string) column {
		return column{fmt.Sprintf("%s × N=%d", what, first), func(r *result) string { return ratioCol("", k, ref[r]).cell(r) }}
	}
	notes = append(notes, l.scaleNotes(hosts, rows)...)
	printTable(fmt.Sprintf("scale: published-port TCP stream, new connections/s and endpoint set-up with N endpoints and published ports on one host, %d s, median of %d", l.secs(), l.o.reps),
		l.withRange([]column{
			singleCol("endpoints", "eps", "%.0f"),
			singleCol("ports", "ports", "%.0f"),
			valCol("Gbit/s", "gbps", "%.2f"),
			vsFirst("Gbit/s", "gbps"),
			{"conn/s", func(r *result) string {
				if r.skip != "" {
					return "n/a"
				}
				if v := r.med("rps"); !math.IsNaN(v) {
					return fmtThousands(v)
				}
				return "failed"
			}},
			vsFirst("conn/s", "rps"),
			singleCol("set-up p50 ms", "su50", "%.1f"),
			singleCol("set-up p99 ms", "su99", "%.1f"),
			vsFirst("p50", "su50"),
		}, rangeCol("Gbit/s min–max", "gbps", "%.2f"), rangeCol("conn/s min–max", "rps", "%.0f")), all, notes...)
}

// singleCol is a column of one value per row, formatted with f.
func singleCol(head, k, f string) column {
	return column{head, func(r *result) string {
		if v, ok := r.vals[k]; ok && len(v) > 0 && !math.IsNaN(v[0]) {
			return fmt.Sprintf(f, v[0])
		}
		if r.skip != "" {
			return "n/a"
		}
		return "–"
	}}
}

// scaleNotes explains the scale table and, for the eBPF host, states the
// issue's target against the first N (also divided by the control's
// change, which is the host's own).
func (l *Lab) scaleNotes(hosts []*scaleHost, rows [][]*result) []string {
	first := l.o.scaleN[0]
	notes := []string{
		fmt.Sprintf("N is the agent's endpoints: fa, fb (ka, kb on k1), sandboxes of earlier sections, and fillers without a command, each publishing one TCP host port (%d…); ports counts all published ports.", hpFillBase),
		fmt.Sprintf("Gbit/s: one iperf3 stream h2 → host:%d → fa/ka:%d; conn/s: wrk -t1 -c8 with Connection: close, h2 → host:%d → fa/ka:%d.", hpFabric, portPerf, hpFabHTTP, portHTTP),
		fmt.Sprintf("set-up: %d API CreateSandbox calls per repetition (one published port each), from the call to the address answering ping from the host, then removed; p50/p99 over all repetitions (%d samples).", scaleSetupN, scaleSetupN*l.o.reps),
		"the kernel-datapath agent runs in its own host namespace k1 (fabricd --datapath kernel), reached from h2 over a veth of its own.",
		fmt.Sprintf("the control row is the kernel's own published port on h1 (nftables DNAT h1:%d/%d → c1a on br0, no fabric endpoint on the path) measured at every N like the others: its change with N is the host's (more namespaces, links, routes, timers), not fabric's; fabric's own change is its ratio divided by the control's.", hpDNAT, hpDNATHTTP),
	}
	eb := rows[0]
	if len(eb) <= 1 || hosts[0].skip != "" || !strings.Contains(hosts[0].label, "eBPF") {
		return notes
	}
	last := eb[len(eb)-1]
	n := l.o.scaleN[len(l.o.scaleN)-1]
	ratio := func(k string) float64 { return last.med(k) / eb[0].med(k) }
	notes = append(notes, fmt.Sprintf("issue target, eBPF at N=%d within 5%% of N=%d (stated for 1,000 vs 10): %s; %s; %s.", n, first,
		target("Gbit/s", ratio("gbps"), 0.95, true, "×"),
		target("conn/s", ratio("rps"), 0.95, true, "×"),
		target("set-up p50", ratio("su50"), 1.05, false, "×")))
	if ctl := rows[len(rows)-1]; len(ctl) == len(eb) && ctl[0].skip == "" {
		cr := func(k string) float64 { return ratio(k) / (ctl[len(ctl)-1].med(k) / ctl[0].med(k)) }
		notes = append(notes, fmt.Sprintf("eBPF at N=%d vs N=%d after the host-wide change (divided by the control's ratio): Gbit/s %.2f×, conn/s %.2f×.", n, first, cr("gbps"), cr("rps")))
	}
	return notes
}
