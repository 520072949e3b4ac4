package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/lab"
)

// The overlay section builds two labs of its own (cmd/internal/lab, as
// `fabricctl lab up` does) under lab.DefaultRoot: one with the eBPF
// datapath (3 nodes: n3 is the victim of the failure rounds) and one with
// the kernel datapath (the kernel VXLAN fallback, 2 nodes). Each gets the
// overlay network ovNet, a server sandbox on n2 running the serve helper
// and a client sandbox on n1.
const (
	ovNet    = "ov"
	ovSubnet = "10.77.0.0/16" // inside the labs' namespaces only
	// labDownLimit bounds one lab's removal (agents, sandboxes, namespaces).
	labDownLimit = 90 * time.Second
)

// overlayLab is one lab of the overlay section.
type overlayLab struct {
	short    string // oe / ok: suffix of the lab name and of its sandboxes
	datapath string
	name     string // lab name: <prefix><short>
	m        *lab.Manifest
	clients  []*api.Client // per node
	srvNS    string        // server sandbox on n2: namespace path
	srvIP    string
	cliNS    string // client sandbox on n1
	downOnce sync.Once
	downErr  error
}

// usedLabThirds returns the third octets of the 10.99.X.0/24 subnets of the
// labs that exist under the default root (other users of the machine).
func usedLabThirds() map[int]bool {
	used := map[int]bool{}
	ents, _ := os.ReadDir(lab.DefaultRoot)
	for _, e := range ents {
		m, err := lab.Load("", e.Name())
		if err != nil {
			continue
		}
		if b := m.Subnet.Addr().As4(); b[0] == 10 && b[1] == 99 {
			used[int(b[2])] = true
		}
	}
	return used
}

// freeLabSubnet picks a 10.99.X.0/24 no existing lab uses, from the top
// down (tests and demos use the low ones), skipping those in taken.
func freeLabSubnet(taken map[int]bool) (netip.Prefix, error) {
	used := usedLabThirds()
	for third := 250; third >= 100; third-- {
		if !used[third] && !taken[third] {
			taken[third] = true
			return netip.ParsePrefix(fmt.Sprintf("10.99.%d.0/24", third))
		}
	}
	return netip.Prefix{}, errors.New("no free 10.99.X.0/24 subnet for a lab")
}

// overlayUp builds one lab with an overlay network, a server sandbox on n2
// and a client sandbox on n1, and checks the client reaches the server.
// The lab is registered for removal before it is built.
func (l *Lab) overlayUp(ctx context.Context, short, datapath string, nodes int, subnet netip.Prefix) (*overlayLab, error) {
	ol := &overlayLab{short: short, datapath: datapath, name: l.ns(short)}
	l.atCleanup(ol.down)
	progress := func(s string) { fmt.Fprintf(os.Stderr, "  overlay: lab %s: %s\n", ol.name, s) }
	m, err := lab.Up(ctx, lab.Options{Name: ol.name, Nodes: nodes, Datapath: datapath,
		Fabricd: filepath.Join(l.o.bin, "fabricd"), Subnet: subnet}, progress)
	if err != nil {
		return ol, fmt.Errorf("lab up %s (--datapath %s): %w", ol.name, datapath, err)
	}
	ol.m = m
	for _, n := range m.Nodes {
		ol.clients = append(ol.clients, api.NewClient(n.Socket))
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := ol.clients[0].CreateNetwork(cctx, api.NetworkCreate{Name: ovNet, Driver: "overlay", Subnet: ovSubnet}); err != nil {
		return ol, fmt.Errorf("lab %s: network create -d overlay: %w", ol.name, err)
	}
	for i, c := range ol.clients[1:] {
		if err := pollFor(cctx, 10*time.Second, 50*time.Millisecond, func() bool {
			_, err := c.Network(cctx, ovNet)
			return err == nil
		}); err != nil {
			return ol, fmt.Errorf("lab %s: overlay network not on n%d: %w", ol.name, i+2, err)
		}
	}
	srv, err := ol.clients[1].CreateSandbox(cctx, api.SandboxCreate{Name: ol.sandbox("srv"), Network: ovNet,
		Command: []string{l.self, serveArg}})
	if err != nil {
		return ol, fmt.Errorf("lab %s: server sandbox on n2: %w", ol.name, err)
	}
	cli, err := ol.clients[0].CreateSandbox(cctx, api.SandboxCreate{Name: ol.sandbox("cli"), Network: ovNet,
		Command: []string{l.self, serveArg, "-iperf", "0", "-sockperf", "0", "-http", "0"}})
	if err != nil {
		return ol, fmt.Errorf("lab %s: client sandbox on n1: %w", ol.name, err)
	}
	ol.srvNS, ol.cliNS = srv.NetNS, cli.NetNS
	if ol.srvIP, err = sandboxIP(srv); err != nil {
		return ol, err
	}
	if err := waitListen(cctx, ol.srvNS, 10*time.Second, portPerf, portLat, portHTTP); err != nil {
		return ol, fmt.Errorf("servers in sandbox %s: %w (log %s)", srv.Name, err, srv.LogPath)
	}
	if _, err := dialFirst(cctx, ol.cliNS, netip.AddrPortFrom(netip.MustParseAddr(ol.srvIP), portHTTP).String(), 10*time.Second); err != nil {
		return ol, fmt.Errorf("lab %s: client sandbox on n1 cannot reach the server on n2 over the overlay: %w", ol.name, err)
	}
	return ol, nil
}

// sandbox names a sandbox of this lab; names are global on the machine.
func (ol *overlayLab) sandbox(what string) string { return ol.name + "-" + what }

// down removes the lab (once; bounded; also when Up failed half-way).
func (ol *overlayLab) down() {
	ol.downOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), labDownLimit)
		defer cancel()
		rep, err := lab.Down(ctx, "", ol.name, nil)
		if errors.Is(err, lab.ErrNotFound) {
			return
		}
		if err != nil {
			failed := ""
			if rep != nil && len(rep.Failed) > 0 {
				failed = " (left: " + strings.Join(rep.Failed, ", ") + ")"
			}
			ol.downErr = fmt.Errorf("lab down %s: %w%s", ol.name, err, failed)
			fmt.Fprintf(os.Stderr, "fabricbench: cleanup: %v\n", ol.downErr)
		}
	})
}

// overlayPath measures one cross-host path: an iperf3 stream with the
// sender's retransmits and the TCP counters of both ends around it, then a
// sockperf ping-pong.
func (l *Lab) overlayPath(cliNS, srvNS, addr string) func(context.Context, int) (map[string]float64, error) {
	return func(ctx context.Context, secs int) (map[string]float64, error) {
		m := map[string]float64{}
		var errs []error
		cb, err1 := readTCPCounters(cliNS)
		sb, err2 := readTCPCounters(srvNS)
		if r, err := l.iperfRun(ctx, cliNS, addr, portPerf, secs); err != nil {
			errs = append(errs, err)
		} else {
			m["gbps"], m["retr"] = r.gbps, r.retransmits
			ca, err3 := readTCPCounters(cliNS)
			sa, err4 := readTCPCounters(srvNS)
			if err := errors.Join(err1, err2, err3, err4); err != nil {
				errs = append(errs, fmt.Errorf("TCP counters: %w", err))
			} else {
				m["reord"] = ca.delta(cb, "TcpExtTCPSACKReorder") + ca.delta(cb, "TcpExtTCPTSReorder")
				m["ofo"] = sa.delta(sb, "TcpExtTCPOFOQueue")
				m["rxdrop"] = sa.delta(sb, "TcpExtTCPRcvQDrop") + sa.delta(sb, "TcpExtTCPOFODrop")
			}
		}
		if p50, p99, err := l.sockperfLat(ctx, cliNS, addr, portLat, secs); err != nil {
			errs = append(errs, err)
		} else {
			m["p50"], m["p99"] = p50, p99
		}
		return m, errors.Join(errs...)
	}
}

// sectionOverlay: fabric's overlay across lab hosts, eBPF datapath against
// the kernel VXLAN fallback and the raw underlay; then how fast a new
// sandbox is reachable from another host and how fast a dead host's
// endpoints are withdrawn.
func (l *Lab) sectionOverlay(ctx context.Context) error {
	fabricd := filepath.Join(l.o.bin, "fabricd")
	if st, err := os.Stat(fabricd); err != nil || st.IsDir() {
		return fmt.Errorf("%s not found (build it with `make build`, or point -bin at it)", fabricd)
	}
	taken := map[int]bool{}
	subK, err := freeLabSubnet(taken)
	if err != nil {
		return err
	}
	subE, err := freeLabSubnet(taken)
	if err != nil {
		return err
	}
	// Both labs are up at once so that the paths alternate; they share
	// nothing but the machine's CPUs.
	var kl, el *overlayLab
	var kerr, eerr error
	var wg sync.WaitGroup
	wg.Go(func() { kl, kerr = l.overlayUp(ctx, "ok", "kernel", 2, subK) })
	wg.Go(func() { el, eerr = l.overlayUp(ctx, "oe", "ebpf", 3, subE) })
	wg.Wait()
	labsDown := func() {
		var wg sync.WaitGroup
		for _, ol := range []*overlayLab{kl, el} {
			if ol != nil {
				wg.Go(ol.down)
			}
		}
		wg.Wait()
	}
	defer labsDown()
	if kerr != nil {
		return kerr
	}
	if eerr != nil {
		return eerr
	}
	if err := l.overlayThroughput(ctx, kl, el); err != nil {
		return err
	}
	var errs []error
	if err := l.overlayConvergence(ctx, el, kl); err != nil {
		errs = append(errs, err)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := l.overlayFailure(ctx, el); err != nil {
		errs = append(errs, err)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	labsDown()
	for _, ol := range []*overlayLab{kl, el} {
		if ol.downErr != nil {
			errs = append(errs, ol.downErr)
		}
	}
	return errors.Join(errs...)
}

// overlayThroughput: the raw underlay n1 → n2 of the kernel lab (no tc
// programs on its uplink), the kernel VXLAN fallback and the eBPF overlay,
// sandbox n1 → sandbox n2.
func (l *Lab) overlayThroughput(ctx context.Context, kl, el *overlayLab) error {
	n1, n2 := kl.m.Nodes[0], kl.m.Nodes[1]
	p, err := l.startIn(ctx, kl.name+"-n2-servers", n2.NetNSPath(), l.self, serveArg)
	if err != nil {
		return err
	}
	defer p.stop(3 * time.Second)
	if err := waitListen(ctx, n2.NetNSPath(), 10*time.Second, portPerf, portLat); err != nil {
		return fmt.Errorf("servers in %s: %w%s", n2.NetNS, err, p.tail())
	}
	specs := []spec{
		{name: "raw lab underlay n1 → n2 (limit)", fn: l.overlayPath(n1.NetNSPath(), n2.NetNSPath(), n2.IP.String())},
		{name: "kernel VXLAN fallback, sandbox n1 → n2 (ref)", fn: l.overlayPath(kl.cliNS, kl.srvNS, kl.srvIP)},
		{name: "eBPF overlay, sandbox n1 → n2", fn: l.overlayPath(el.cliNS, el.srvNS, el.srvIP)},
	}
	res := runAlternating(ctx, "overlay", l.secs(), l.o.reps, specs)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	raw, kv, eb := res[0], res[1], res[2]
	notes := []string{
		"retrans: the sender's TCP retransmits per run (iperf3 end.sum_sent.retransmits); reorder: the sender's " +
			"TcpExtTCPSACKReorder + TcpExtTCPTSReorder; OFO: the receiver's TcpExtTCPOFOQueue (segments queued out of order); " +
			"rx drop: the receiver's TcpExtTCPRcvQDrop + TcpExtTCPOFODrop — all per run, medians.",
		"targets: " + strings.Join([]string{
			target("eBPF ≥ 0.97× kernel VXLAN", eb.med("gbps")/kv.med("gbps"), 0.97, true, "×"),
			target("eBPF ≥ 0.85× raw underlay", eb.med("gbps")/raw.med("gbps"), 0.85, true, "×"),
			target("ping-pong p50 ≤ 1.05× kernel VXLAN", eb.med("p50")/kv.med("p50"), 1.05, false, "×"),
			target("retransmits ≤ kernel VXLAN", eb.med("retr"), kv.med("retr"), false, ""),
		}, "; "),
		"DESIGN.md (another run, for context only): raw 11.7–13.7 Gbit/s, 10–16 µs; kernel VXLAN 10.1–11.2 Gbit/s, 12–20 µs.",
	}
	printTable(fmt.Sprintf("overlay: one TCP stream (iperf3) and TCP ping-pong (sockperf, one-way µs) across lab hosts, %d s, median of %d", l.secs(), l.o.reps),
		l.withRange([]column{
			valCol("Gbit/s", "gbps", "%.2f"),
			ratioCol("× raw", "gbps", raw),
			ratioCol("× kernel VXLAN", "gbps", kv),
			valCol("p50 µs", "p50", "%.1f"),
			valCol("p99 µs", "p99", "%.1f"),
			ratioCol("p50 × kernel VXLAN", "p50", kv),
			valCol("retrans", "retr", "%.0f"),
			valCol("reorder", "reord", "%.0f"),
			valCol("OFO", "ofo", "%.0f"),
			valCol("rx drop", "rxdrop", "%.0f"),
		}, rangeCol("Gbit/s min–max", "gbps", "%.2f"), rangeCol("p50 min–max", "p50", "%.1f"), rangeCol("retrans min–max", "retr", "%.0f")),
		res, notes...)
	return nil
}

// target formats one target check: "name: got (met)" or "(NOT met)";
// atLeast says whether got must be ≥ limit (else ≤).
func target(name string, got, limit float64, atLeast bool, unit string) string {
	if math.IsNaN(got) || math.IsInf(got, 0) || math.IsNaN(limit) {
		return name + ": not measured"
	}
	met := got <= limit
	if atLeast {
		met = got >= limit
	}
	verdict := "met"
	if !met {
		verdict = "NOT met"
	}
	if unit == "×" {
		return fmt.Sprintf("%s: %.2f× (%s)", name, got, verdict)
	}
	return fmt.Sprintf("%s: %.0f vs %.0f (%s)", name, got, limit, verdict)
}

// pollFor calls cond every interval until it is true, ctx ends or limit
// passes.
func pollFor(ctx context.Context, limit, interval time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for {
		if cond() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not after %s", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}
