package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns"
	"golang.org/x/sys/unix"
)

const (
	pingEvery = 200 * time.Microsecond // send interval while waiting for a reply
	pingCap   = 2 * time.Second        // give up on one sandbox after this
)

// pinger sends ICMP echo requests from h1 through an unprivileged ICMP
// ("ping") socket. The socket is made on a thread switched into h1 and stays
// in h1's namespace; h1's net.ipv4.ping_group_range includes gid 0.
type pinger struct {
	fd  int
	seq uint16
}

func newPinger(nsPath string) (*pinger, error) {
	p := &pinger{fd: -1}
	err := netns.Do(nsPath, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		if err != nil {
			return fmt.Errorf("ICMP socket (is net.ipv4.ping_group_range set?): %w", err)
		}
		p.fd = fd
		return nil
	})
	if err != nil {
		return nil, err
	}
	// The receive timeout is the send interval: each wait for a reply is
	// at most one interval before the next request goes out.
	tv := unix.NsecToTimeval(pingEvery.Nanoseconds())
	if err := unix.SetsockoptTimeval(p.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(p.fd)
		return nil, err
	}
	return p, nil
}

func (p *pinger) close() { unix.Close(p.fd) }

// hostPinger opens a pinger in host namespace short for a section that
// measures several hosts: when it cannot, it returns nil and the reason to
// skip that host.
func (l *Lab) hostPinger(short string) (*pinger, string) {
	pg, err := newPinger(l.nsPath(short))
	if err != nil {
		return nil, "pinger: " + err.Error()
	}
	return pg, ""
}

// waitReply sends echo requests to addr every pingEvery until one is
// answered and returns the time of the reply. Bounded by pingCap.
func (p *pinger) waitReply(ctx context.Context, addr netip.Addr) (time.Time, error) {
	to := &unix.SockaddrInet4{Addr: addr.As4()}
	deadline := time.Now().Add(pingCap)
	buf := make([]byte, 1500)
	var lastErr error
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return time.Time{}, ctx.Err()
		}
		p.seq++
		pkt := []byte{8, 0, 0, 0, 0, 0, byte(p.seq >> 8), byte(p.seq), 'f', 'b', 'b', 0}
		cs := icmpChecksum(pkt)
		pkt[2], pkt[3] = byte(cs>>8), byte(cs)
		if err := unix.Sendto(p.fd, pkt, 0, to); err != nil {
			// No route or neighbour yet (EHOSTUNREACH, …): try again.
			lastErr = err
			time.Sleep(pingEvery)
			continue
		}
		sent := time.Now()
		for time.Since(sent) < pingEvery {
			n, from, err := unix.Recvfrom(p.fd, buf, 0)
			if err != nil {
				if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
					lastErr = err
				}
				break
			}
			f, ok := from.(*unix.SockaddrInet4)
			if ok && n >= 8 && buf[0] == 0 && netip.AddrFrom4(f.Addr) == addr {
				return time.Now(), nil
			}
		}
	}
	if lastErr != nil {
		return time.Time{}, fmt.Errorf("no echo reply from %s within %s (last error: %w)", addr, pingCap, lastErr)
	}
	return time.Time{}, fmt.Errorf("no echo reply from %s within %s", addr, pingCap)
}

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// setupStats are the samples of one way of creating sandboxes, in ms.
type setupStats struct {
	name     string
	returned []float64 // until the command / API call returned
	ready    []float64 // until the address answered ICMP echo
	rm       []float64 // sandbox rm
	errs     []string
}

// sectionSetup creates -setup-n sandboxes each way, alternating, and times
// until the new sandbox's address answers a ping from h1.
func (l *Lab) sectionSetup(ctx context.Context) error {
	if l.fabricErr != nil {
		fmt.Printf("## setup\n\nfabric unavailable (%v): nothing measured.\n\n", l.fabricErr)
		return nil
	}
	pg, err := newPinger(l.nsPath("h1"))
	if err != nil {
		return err
	}
	defer pg.close()
	ways := l.setupWays()
	// The floor under every CLI row: starting a process at all on this
	// machine, timed alternately with the creates.
	floors := []*processFloor{
		{name: "exec /bin/true (any process)", argv: []string{"/bin/true"}},
		{name: "exec fabricctl --help (Go CLI start, no API call)", argv: []string{l.fabricctl(), "--help"}},
	}

	// One warm-up each (not counted), then n alternating samples.
	n := l.o.setupN
	for i := 0; i <= n && ctx.Err() == nil; i++ {
		for _, w := range ways {
			name := fmt.Sprintf("%ss%s%d", l.prefix, w.tag, i)
			if i%10 == 0 {
				fmt.Fprintf(os.Stderr, "  setup: %s sandbox %d/%d\n", w.tag, i, n)
			}
			if w.tag == "c" {
				for _, f := range floors {
					f.measure(ctx, i == 0)
				}
			}
			w.createOne(ctx, pg, name, i == 0)
		}
	}
	if ctx.Err() != nil {
		return ctx.Err() // the cleanup removes what was made
	}
	l.removeSetupSandboxes(ctx, ways)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	printSetup(l.o.setupN, ways[0].st, ways[1].st)
	printFloors(l.o.setupN, floors)
	return nil
}

// setupWay is one way of making sandboxes that sectionSetup times.
type setupWay struct {
	st     *setupStats
	create func(context.Context, string) (api.Sandbox, error)
	rm     func(context.Context, string) error
	tag    string
	made   []string
}

// setupWays are the CLI (fabricctl run -d, then sandbox rm) and the API
// client in this process, in that order.
func (l *Lab) setupWays() []*setupWay {
	sleepCmd := []string{"sleep", "600"}
	viaCLI := func(ctx context.Context, name string) (api.Sandbox, error) {
		return l.fabricRun(ctx, []string{"--name", name}, sleepCmd)
	}
	viaAPI := func(ctx context.Context, name string) (api.Sandbox, error) {
		l.trackSandbox(name)
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return l.client.CreateSandbox(cctx, api.SandboxCreate{Name: name, Command: sleepCmd})
	}
	rmCLI := func(ctx context.Context, name string) error {
		_, err := runCmd(ctx, 30*time.Second, l.fabricctl(), "--socket", l.socket, "sandbox", "rm", name)
		return err
	}
	rmAPI := func(ctx context.Context, name string) error {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return l.client.RemoveSandbox(cctx, name)
	}
	return []*setupWay{
		{st: &setupStats{name: "fabricctl run -d (binary, incl. its start)"}, create: viaCLI, rm: rmCLI, tag: "c"},
		{st: &setupStats{name: "API CreateSandbox (client in-process)"}, create: viaAPI, rm: rmAPI, tag: "a"},
	}
}

// createOne makes sandbox name and times until its call returned and
// until its address answers pg; a warm-up is made but not counted.
func (w *setupWay) createOne(ctx context.Context, pg *pinger, name string, warmUp bool) {
	t0 := time.Now()
	sb, err := w.create(ctx, name)
	returned := time.Since(t0)
	w.made = append(w.made, name)
	var ready time.Duration
	if err == nil {
		var ip string
		if ip, err = sandboxIP(sb); err == nil {
			var t time.Time
			if t, err = pg.waitReply(ctx, netip.MustParseAddr(ip)); err == nil {
				ready = t.Sub(t0)
			}
		}
	}
	if warmUp {
		return
	}
	if err != nil {
		w.st.errs = append(w.st.errs, fmt.Sprintf("%s: %v", name, err))
		return
	}
	w.st.returned = append(w.st.returned, ms(returned))
	w.st.ready = append(w.st.ready, ms(ready))
}

// removeSetupSandboxes removes what the ways made, alternating between
// them, timing each removal but the warm-up's.
func (l *Lab) removeSetupSandboxes(ctx context.Context, ways []*setupWay) {
	for i := 0; ctx.Err() == nil; i++ {
		left := false
		for _, w := range ways {
			if i >= len(w.made) {
				continue
			}
			left = true
			name := w.made[i]
			t0 := time.Now()
			err := w.rm(ctx, name)
			d := time.Since(t0)
			if err != nil {
				w.st.errs = append(w.st.errs, fmt.Sprintf("rm %s: %v", name, err))
				continue
			}
			l.untrackSandbox(name)
			if i > 0 {
				w.st.rm = append(w.st.rm, ms(d))
			}
		}
		if !left {
			return
		}
	}
}

// processFloor times a process that does nothing: what exec alone costs
// here, below which no CLI-driven figure can go.
type processFloor struct {
	name    string
	argv    []string
	samples []float64
	errs    []string
}

func (f *processFloor) measure(ctx context.Context, warmup bool) {
	t0 := time.Now()
	_, err := runCmd(ctx, 10*time.Second, f.argv[0], f.argv[1:]...)
	d := time.Since(t0)
	if warmup {
		return
	}
	if err != nil {
		f.errs = append(f.errs, err.Error())
		return
	}
	f.samples = append(f.samples, ms(d))
}

func printFloors(n int, floors []*processFloor) {
	var rows []*result
	for _, f := range floors {
		rows = append(rows, &result{spec: spec{name: f.name}, runs: len(f.samples) + len(f.errs), errs: f.errs,
			vals: map[string][]float64{"p50": {percentile(f.samples, 50)}, "p99": {percentile(f.samples, 99)}}})
	}
	cell := msCell
	printTable(fmt.Sprintf("setup: process start floor, exec to exit (ms), n=%d each, alternating with the creates", n),
		[]column{{"p50", cell("p50")}, {"p99", cell("p99")}},
		rows,
		"the fabricctl row above includes one such start; the API row does not.")
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// msCell formats a row's first value under key k in ms, "–" if missing.
func msCell(k string) func(*result) string {
	return func(r *result) string {
		v, ok := r.vals[k]
		if !ok || len(v) == 0 || math.IsNaN(v[0]) {
			return "–"
		}
		return fmt.Sprintf("%.1f", v[0])
	}
}

func printSetup(n int, stats ...*setupStats) {
	var rows []*result
	for _, s := range stats {
		r := &result{spec: spec{name: s.name}, vals: map[string][]float64{
			"p50": {percentile(s.ready, 50)}, "p99": {percentile(s.ready, 99)}, "max": {percentile(s.ready, 100)},
			"ret": {percentile(s.returned, 50)}, "rm": {percentile(s.rm, 50)},
		}}
		r.runs = len(s.ready) + len(s.errs)
		r.errs = s.errs
		rows = append(rows, r)
	}
	rows = append(rows,
		&result{spec: spec{name: "Docker `network connect` (DESIGN.md, not measured)"}, vals: map[string][]float64{"p50": {84}}},
		&result{spec: spec{name: "CNI bridge + host-local ADD (DESIGN.md, not measured)"}, vals: map[string][]float64{"p50": {126}}},
	)
	cell := msCell
	docker := rows[len(rows)-2]
	printTable(fmt.Sprintf("setup: endpoint set-up, from issuing the create to the address answering ping from h1 (ms), n=%d each, alternating", n),
		[]column{
			{"ready p50", cell("p50")},
			{"ready p99", cell("p99")},
			{"ready max", cell("max")},
			ratioCol("p50 × Docker", "p50", docker),
			{"create returned p50", cell("ret")},
			{"sandbox rm p50", cell("rm")},
		}, rows,
		fmt.Sprintf("ping every %s, at most %s per sandbox; the first sandbox of each way is a warm-up, not counted.", pingEvery, pingCap),
		"the reference rows come from DESIGN.md (another run, another tool) and are context, not a measurement.")
}

// timedCreate creates one sandbox through client and returns how long it
// took from the call until its address answered pg's ping (ms).
func timedCreate(ctx context.Context, client *api.Client, pg *pinger, req api.SandboxCreate) (float64, error) {
	t0 := time.Now()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	sb, err := client.CreateSandbox(cctx, req)
	cancel()
	if err != nil {
		return 0, err
	}
	ip, err := sandboxIP(sb)
	if err != nil {
		return 0, err
	}
	t, err := pg.waitReply(ctx, netip.MustParseAddr(ip))
	if err != nil {
		return 0, err
	}
	return ms(t.Sub(t0)), nil
}

// removeTimed removes a sandbox made by timedCreate; one that is gone
// already counts as removed. untrack is called once it is gone.
func removeTimed(client *api.Client, untrack func(string), name string) error {
	cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	err := client.RemoveSandbox(cctx, name)
	cancel()
	var apiErr *api.Error
	if err == nil || (errors.As(err, &apiErr) && apiErr.Code == api.CodeNotFound) {
		untrack(name)
		return nil
	}
	return fmt.Errorf("remove %s: %w", name, err)
}
