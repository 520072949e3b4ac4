package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
)

// throughputLatency measures one path: an iperf3 stream, then a sockperf
// ping-pong, both from nsPath to addr.
func (l *Lab) throughputLatency(nsPath, addr string) func(context.Context, int) (map[string]float64, error) {
	return func(ctx context.Context, secs int) (map[string]float64, error) {
		m := map[string]float64{}
		var errs []error
		if g, err := l.iperf(ctx, nsPath, addr, portPerf, secs); err != nil {
			errs = append(errs, err)
		} else {
			m["gbps"] = g
		}
		if p50, p99, err := l.sockperfLat(ctx, nsPath, addr, portLat, secs); err != nil {
			errs = append(errs, err)
		} else {
			m["p50"], m["p99"] = p50, p99
		}
		return m, errors.Join(errs...)
	}
}

// sectionSameHost: bulk TCP and TCP ping-pong latency between two endpoints
// on one host: raw underlay veth (the limit), the kernel bridge (the
// reference, docker0's path) and two fabric sandboxes.
func (l *Lab) sectionSameHost(ctx context.Context) error {
	specs := []spec{
		{name: "raw veth h1 → h2 (limit)", fn: l.throughputLatency(l.nsPath("h1"), h2IP)},
		{name: "kernel bridge c1a → c1b (ref)", fn: l.throughputLatency(l.nsPath("c1a"), c1bIP)},
		{name: "fabric fa → fb", skip: l.fabricSkip()},
	}
	if specs[2].skip == "" {
		specs[2].fn = l.throughputLatency(l.faNS, l.fbIP)
	}
	return l.runStreamPing(ctx, "same-host", specs,
		func(res []*result) []column { return l.streamPingColumns("bridge", res[1], "raw", res[0]) },
		"throughput ratios > 1 are faster; latency ratios < 1 are faster.",
		"DESIGN.md (another run, for context only): raw 11.7–13.7 Gbit/s, 10–16 µs; bridge 11.1–12.6 Gbit/s, 11–17 µs.")
}

// runStreamPing measures specs (throughputLatency rows) alternating, as
// section name, and prints their stream and ping-pong table; cols makes
// the columns from the results, whose first rows are the references.
func (l *Lab) runStreamPing(ctx context.Context, name string, specs []spec, cols func(res []*result) []column, notes ...string) error {
	res := runAlternating(ctx, name, l.secs(), l.o.reps, specs)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	printTable(fmt.Sprintf("%s: one TCP stream (iperf3) and TCP ping-pong (sockperf, one-way µs), %d s, median of %d", name, l.secs(), l.o.reps),
		cols(res), res, notes...)
	return nil
}

// stream measures one iperf3 TCP stream from nsPath to addr:port, in
// Gbit/s ("gbps").
func (l *Lab) stream(nsPath, addr string, port int) func(context.Context, int) (map[string]float64, error) {
	return func(ctx context.Context, secs int) (map[string]float64, error) {
		g, err := l.iperf(ctx, nsPath, addr, port, secs)
		if err != nil {
			return nil, err
		}
		return map[string]float64{"gbps": g}, nil
	}
}

// sectionPublished: one TCP stream to a published port, from another host
// (h2 → h1's underlay address) and from the host itself (127.0.0.1).
func (l *Lab) sectionPublished(ctx context.Context) error {
	h1, h2 := l.nsPath("h1"), l.nsPath("h2")
	stream := l.stream
	skip := l.fabricSkip()
	specs := []spec{
		{name: fmt.Sprintf("nftables DNAT, h2 → h1:%d (ref)", hpDNAT), fn: stream(h2, h1IP, hpDNAT)},
		{name: fmt.Sprintf("docker-proxy, h2 → h1:%d", hpProxy), fn: stream(h2, h1IP, hpProxy)},
		{name: fmt.Sprintf("fabric, h2 → h1:%d", hpFabric), skip: skip, fn: stream(h2, h1IP, hpFabric)},
		{name: fmt.Sprintf("docker-proxy, h1 → 127.0.0.1:%d", hpProxy), fn: stream(h1, "127.0.0.1", hpProxy)},
		{name: fmt.Sprintf("fabric, h1 → 127.0.0.1:%d", hpFabric), skip: skip, fn: stream(h1, "127.0.0.1", hpFabric)},
	}
	res := runAlternating(ctx, "published", l.secs(), l.o.reps, specs)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	dnat := res[0]
	// Each row against the docker-proxy of the same origin.
	proxyOf := map[*result]*result{res[0]: res[1], res[1]: res[1], res[2]: res[1], res[3]: res[3], res[4]: res[3]}
	printTable(fmt.Sprintf("published: one TCP stream (iperf3) to a published port → c1a/fa:%d, %d s, median of %d", portPerf, l.secs(), l.o.reps),
		l.withRange([]column{
			valCol("Gbit/s", "gbps", "%.2f"),
			ratioCol("× DNAT", "gbps", dnat),
			{"× docker-proxy (same origin)", func(r *result) string {
				return ratioCol("", "gbps", proxyOf[r]).cell(r)
			}},
		}, rangeCol("Gbit/s min–max", "gbps", "%.2f")), res,
		"DESIGN.md (another run, for context only): DNAT 10.8–12.1, docker-proxy 6.3–7.3 Gbit/s; real Docker from another host / localhost 10.8 / 7.4 Gbit/s.")
	return nil
}

// sectionConnRate: new connections per second through a published port,
// one HTTP request per connection (wrk, "Connection: close") from h2 to the
// HTTP server fabricbench runs in c1a / fa.
func (l *Lab) sectionConnRate(ctx context.Context) error {
	h2 := l.nsPath("h2")
	var mu sync.Mutex
	wrkErrs := map[string]string{}
	rate := func(name string, port int) func(context.Context, int) (map[string]float64, error) {
		url := fmt.Sprintf("http://%s:%d/", h1IP, port)
		return func(ctx context.Context, secs int) (map[string]float64, error) {
			r, err := l.wrk(ctx, h2, url, secs)
			if err != nil {
				return nil, err
			}
			if r.errors != "" && secs == l.secs() {
				mu.Lock()
				wrkErrs[name] = r.errors
				mu.Unlock()
			}
			return map[string]float64{"rps": r.rps}, nil
		}
	}
	names := []string{
		fmt.Sprintf("nftables DNAT, h2 → h1:%d (ref)", hpDNATHTTP),
		fmt.Sprintf("docker-proxy, h2 → h1:%d", hpProxyHTTP),
		fmt.Sprintf("fabric, h2 → h1:%d", hpFabHTTP),
	}
	specs := []spec{
		{name: names[0], fn: rate(names[0], hpDNATHTTP)},
		{name: names[1], fn: rate(names[1], hpProxyHTTP)},
		{name: names[2], skip: l.fabricSkip(), fn: rate(names[2], hpFabHTTP)},
	}
	res := runAlternating(ctx, "connrate", l.secs(), l.o.reps, specs)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	notes := []string{"wrk -t1 -c8, one request per connection (Connection: close); every request is a new TCP connection."}
	for _, n := range names {
		if e, ok := wrkErrs[n]; ok {
			notes = append(notes, fmt.Sprintf("%s: wrk reported %s", n, e))
		}
	}
	notes = append(notes, "DESIGN.md (real Docker, another run, for context only): DNAT 9,600/s, docker-proxy 4,300/s.")
	printTable(fmt.Sprintf("connrate: new connections/s through a published port → c1a/fa:%d, %d s, median of %d", portHTTP, l.secs(), l.o.reps),
		l.withRange([]column{
			{"conn/s", func(r *result) string {
				if r.skip != "" {
					return "n/a"
				}
				v := r.med("rps")
				if math.IsNaN(v) {
					return "failed"
				}
				return fmtThousands(v)
			}},
			ratioCol("× DNAT", "rps", res[0]),
			ratioCol("× docker-proxy", "rps", res[1]),
		}, rangeCol("conn/s min–max", "rps", "%.0f")), res, notes...)
	return nil
}

// fmtThousands formats v rounded, with thousands separators (9,600).
func fmtThousands(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	neg := s[0] == '-'
	if neg {
		s = s[1:]
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

// withRange appends spread columns when there is more than one repetition.
// streamPingColumns are the columns of a table of one TCP stream and TCP
// ping-pong per row: throughput and latency, each also as a ratio to the
// rows named a and b.
func (l *Lab) streamPingColumns(aName string, a *result, bName string, b *result) []column {
	return l.withRange([]column{
		valCol("Gbit/s", "gbps", "%.2f"),
		ratioCol("× "+aName, "gbps", a),
		ratioCol("× "+bName, "gbps", b),
		valCol("p50 µs", "p50", "%.1f"),
		valCol("p99 µs", "p99", "%.1f"),
		ratioCol("p50 × "+aName, "p50", a),
		ratioCol("p50 × "+bName, "p50", b),
	}, rangeCol("Gbit/s min–max", "gbps", "%.2f"), rangeCol("p50 min–max", "p50", "%.1f"))
}

func (l *Lab) withRange(cols []column, ranges ...column) []column {
	if l.o.reps < 2 {
		return cols
	}
	return append(cols, ranges...)
}
