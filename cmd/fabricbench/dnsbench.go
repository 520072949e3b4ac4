package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/fabricnet/fabric/cmd/fabricbench/dnsload"
	"github.com/fabricnet/fabric/cmd/internal/dns"
	mdns "github.com/miekg/dns"
)

// Re-exec modes of the DNS section: a load generator that runs inside a
// sandbox's namespace (its sockets must be there), and the fake upstream
// the agent forwards to (on h1's loopback, so no query leaves the lab).
const (
	dnsLoadArg     = "__fabricbench-dnsload"
	dnsUpstreamArg = "__fabricbench-dnsupstream"
	dnsUpstream    = "127.0.0.1:5354" // in h1, where the agent runs
)

// dnsLoadMain: ADDR CLIENTS SECONDS NAME → prints {"qps","p50_us","p99_us"}.
func dnsLoadMain(args []string) int {
	if len(args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: ADDR CLIENTS SECONDS NAME")
		return 2
	}
	clients, err1 := strconv.Atoi(args[1])
	secs, err2 := strconv.Atoi(args[2])
	if err1 != nil || err2 != nil {
		fmt.Fprintln(os.Stderr, "CLIENTS and SECONDS must be numbers")
		return 2
	}
	qps, p50, p99, err := dnsload.Run(context.Background(), args[0], clients, time.Duration(secs)*time.Second, args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	_ = json.NewEncoder(os.Stdout).Encode(map[string]float64{
		"qps": qps, "p50": float64(p50.Microseconds()), "p99": float64(p99.Microseconds()),
	})
	return 0
}

// dnsUpstreamMain answers every A query with 192.0.2.53 (and exits after
// four hours at the latest).
func dnsUpstreamMain(args []string) int {
	h := mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 && r.Question[0].Qtype == mdns.TypeA {
			rr, _ := mdns.NewRR(r.Question[0].Name + " 30 IN A 192.0.2.53")
			m.Answer = append(m.Answer, rr)
		}
		_ = w.WriteMsg(m)
	})
	srv := &mdns.Server{Addr: args[0], Net: "udp", Handler: h}
	time.AfterFunc(4*time.Hour, func() { _ = srv.Shutdown() })
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// sectionDNS: queries per second and latency of the embedded DNS server,
// asked from inside sandbox fb at 127.0.0.11: a local name (sandbox fa)
// and a forwarded one (answered by a fake upstream on h1's loopback), with
// 1 and 100 concurrent clients.
func (l *Lab) sectionDNS(ctx context.Context) error {
	if skip := l.fabricSkip(); skip != "" {
		return fmt.Errorf("%s", skip)
	}
	if _, err := l.startIn(ctx, "dns-upstream", l.nsPath("h1"), l.self, dnsUpstreamArg, dnsUpstream); err != nil {
		return err
	}
	load := func(clients int, name string) func(context.Context, int) (map[string]float64, error) {
		return func(ctx context.Context, secs int) (map[string]float64, error) {
			out, err := runCmd(ctx, time.Duration(secs+20)*time.Second, "nsenter", "--net="+l.fbNS,
				l.self, dnsLoadArg, dns.Address+":53", strconv.Itoa(clients), strconv.Itoa(secs), name)
			if err != nil {
				return nil, err
			}
			m := map[string]float64{}
			if err := json.Unmarshal([]byte(strings.TrimSpace(lastLines(out, 1))), &m); err != nil {
				return nil, fmt.Errorf("load generator output %q: %w", out, err)
			}
			return m, nil
		}
	}
	local := l.ns("fa")
	specs := []spec{
		{name: "local name, 1 client", fn: load(1, local)},
		{name: "local name, 100 clients", fn: load(100, local)},
		{name: "forwarded name, 1 client", fn: load(1, "bench.example")},
		{name: "forwarded name, 100 clients", fn: load(100, "bench.example")},
	}
	res := runAlternating(ctx, "dns", l.secs(), l.o.reps, specs)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	docker := &result{spec: spec{name: "Docker embedded DNS, 100 clients (DESIGN.md, dnsperf)"}, vals: map[string][]float64{"qps": {50000}}, runs: 1}
	printTable(fmt.Sprintf("dns: embedded DNS at 127.0.0.11 from inside a sandbox, %d s, median of %d", l.secs(), l.o.reps),
		l.withRange([]column{
			valCol("queries/s", "qps", "%.0f"),
			ratioCol("× Docker (50,000)", "qps", docker),
			valCol("p50 µs", "p50", "%.0f"),
			valCol("p99 µs", "p99", "%.0f"),
		}, rangeCol("qps min–max", "qps", "%.0f")), res,
		"load generator: one socket per CPU, one outstanding query per client (like dnsperf), run inside the querying sandbox.",
		"forwarded names go to a fake upstream on the agent host's loopback (127.0.0.1:5354), one fresh socket per forward.",
		"Docker's embedded DNS (DESIGN.md, another run): 50,000 qps and 2.9 ms average at 100 clients with dnsperf.")
	return nil
}
