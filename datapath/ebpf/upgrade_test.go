//go:build linux

package ebpf

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// The upgrade test: one host namespace with the eBPF datapath, one bridge
// network, two sandboxes on it. Traffic runs between the sandboxes while
// the agent restarts with a different endpoint object (and later back),
// the way an upgraded agent would.

// The counter cell the marked variant counts every packet in: direction 7,
// verdict 3, reason 63 exist in no program (fabric.h keeps them as room),
// so only the variant makes it move. Metrics names unnamed values by
// number. The index is fabric.h's counter_index (VERDICT_MAX 4,
// REASON_MAX 64).
const (
	markerDirection, markerVerdict, markerReason = 7, 3, 63
	markerIndex                                  = (markerDirection*4+markerVerdict)*64 + markerReason
)

const endpointObject = "../../bpf/endpoint_bpfel.o" // the committed object the agent embeds

// markedVariant returns a copy of spec whose from_endpoint program first
// adds one to the marker counter, then runs unchanged: other instructions
// (so another tag) on the same maps, whose presence shows in the counters.
func markedVariant(t *testing.T, spec *ebpf.CollectionSpec) *ebpf.CollectionSpec {
	t.Helper()
	v := spec.Copy()
	p := v.Programs["from_endpoint"]
	if p == nil || len(p.Instructions) == 0 {
		t.Fatalf("%s has no from_endpoint program", endpointObject)
	}
	skipIncrement := asm.Instruction{OpCode: asm.JEq.Op(asm.ImmSource), Dst: asm.R0, Constant: 0, Offset: 3}
	prologue := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1), // the context, for the program proper
		asm.StoreImm(asm.RFP, -4, markerIndex, asm.Word),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, 0).WithReference("counters"),
		asm.FnMapLookupElem.Call(),
		skipIncrement,
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord), // struct counter: packets first
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R6),
	}
	// The function's symbol and BTF func info move to the new first
	// instruction; the kernel also wants a line info there.
	first := p.Instructions[0]
	prologue[0] = btf.WithFuncMetadata(prologue[0].WithSymbol(first.Symbol()), btf.FuncMetadata(&first)).
		WithSource(asm.Comment("upgrade test: count the packet in the marker cell"))
	p.Instructions[0] = btf.WithFuncMetadata(first.WithSymbol(""), nil)
	p.Instructions = append(prologue, p.Instructions...)
	return v
}

type upgradeLab struct {
	t *testing.T
	// a is the host namespace, its datapath and the first sandbox; b is
	// the second sandbox behind the same host (its datapath fields are
	// unused). Both are overlayHosts so that its traffic helpers apply.
	a, b *overlayHost
	net  datapath.Network
}

func newUpgradeLab(t *testing.T) *upgradeLab {
	t.Helper()
	netnstest.RequireRoot(t)
	name, path := netnstest.New(t, "fbh")
	netnstest.Run(t, name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
	netnstest.Run(t, name, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
	root := filepath.Join("/sys/fs/bpf", netnstest.UniqueName("fabric-test-"))
	t.Cleanup(func() { _ = os.RemoveAll(root) }) // after the datapath's Close, registered below
	l := &upgradeLab{t: t, net: datapath.Network{
		ID: netnstest.UniqueName("upg-"), Name: "upg", Driver: datapath.DriverBridge,
		Subnet: netip.MustParsePrefix("10.79.0.0/24"), Gateway: netip.MustParseAddr("10.79.0.1"),
		Bridge: netnstest.UniqueName("fbr"),
	}}
	opts := Options{NetNSPath: path, BPFRoot: root, XDP: XDPOff}
	l.a = &overlayHost{t: t, name: name, path: path, opts: opts}
	l.a.start()
	l.b = &overlayHost{t: t, name: name, path: path, opts: opts}
	for i, h := range []*overlayHost{l.a, l.b} {
		h.addSandbox(l.net, byte(2+i))
	}
	ctx := context.Background()
	if err := l.a.dp.EnsureNetwork(ctx, l.net); err != nil {
		t.Fatalf("ensure network: %v", err)
	}
	for _, h := range []*overlayHost{l.a, l.b} {
		if err := l.a.dp.EnsureEndpoint(ctx, l.net, h.ep); err != nil {
			t.Fatalf("ensure endpoint %s: %v", h.ep.Addr, err)
		}
	}
	return l
}

// upgrade is an agent restart onto spec (nil: the built-in object): a new
// datapath on the same bpf root, then Sync as the agent reconciles on
// start, which ensures every endpoint again and so swaps the new program
// into its pinned link.
func (l *upgradeLab) upgrade(spec *ebpf.CollectionSpec) {
	l.t.Helper()
	if err := l.a.dp.Close(); err != nil {
		l.t.Fatalf("close datapath: %v", err)
	}
	l.a.opts.EndpointSpec = spec
	l.a.start()
	s := datapath.State{Networks: []datapath.Network{l.net}, Endpoints: []datapath.Endpoint{l.a.ep, l.b.ep}}
	if err := l.a.dp.Sync(context.Background(), s); err != nil {
		l.t.Fatalf("sync after restart: %v", err)
	}
}

// linkPins name both endpoints' hooks (ifindex in the name), where an
// older agent pinned their programs or TCX links.
func (l *upgradeLab) linkPins() []string {
	l.t.Helper()
	nl := netnstest.Handle(l.t, l.a.path)
	defer nl.Close()
	var pins []string
	for _, h := range []*overlayHost{l.a, l.b} {
		hl, err := nl.LinkByName(h.ep.HostIfName)
		if err != nil {
			l.t.Fatalf("host veth %s: %v", h.ep.HostIfName, err)
		}
		pins = append(pins, filepath.Join(l.a.opts.BPFRoot, "links", endpointPin(hl.Attrs().Index)))
	}
	return pins
}

// linkedProgram is the program the hook of a pin runs: an older agent's
// pinned TCX link's, or that of fabric's filter on the shared tc block
// the endpoint veth's clsact qdisc is bound to.
func (l *upgradeLab) linkedProgram(t *testing.T, pin string) *ebpf.ProgramInfo {
	t.Helper()
	id := l.filterProgram(t, pin)
	if lk, err := link.LoadPinnedLink(pin, nil); err == nil {
		defer lk.Close()
		info, err := lk.Info()
		if err != nil {
			t.Fatalf("link info of %s: %v", pin, err)
		}
		id = info.Program
	} else if id == 0 {
		t.Fatalf("%s: neither a pinned link nor a filter on the endpoints' tc block: %v", pin, err)
	}
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		t.Fatalf("program %d of %s: %v", id, pin, err)
	}
	defer p.Close()
	pi, err := p.Info()
	if err != nil {
		t.Fatalf("program info %d: %v", id, err)
	}
	return pi
}

// filterProgram is the program the endpoint veth pin is for runs (0 if
// none): its clsact qdisc must be bound to the datapath's blocks, and the
// program is that of fabric's filter on the ingress block, checked
// against the block's pin.
func (l *upgradeLab) filterProgram(t *testing.T, pin string) ebpf.ProgramID {
	t.Helper()
	var f Forwarder
	ifindex, _, ok := f.clsactTarget(filepath.Base(pin))
	if !ok {
		t.Fatalf("%s: not an endpoint pin", pin)
	}
	blk := l.a.dp.fwd.epBlock
	c, ok := clsactIn(t, l.a.path, ifindex)
	if !ok || blk == 0 || c.ingress != blk || c.egress != blk+1 {
		return 0
	}
	return blockProgram(t, l.a.path, l.a.opts.BPFRoot, blk)
}

// clsactIn is ifindex's clsact qdisc in the namespace at nsPath.
func clsactIn(t *testing.T, nsPath string, ifindex int) (clsactInfo, bool) {
	t.Helper()
	s, err := openTCSock(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, ok, err := s.clsactOf(ifindex)
	if err != nil {
		t.Fatal(err)
	}
	return c, ok
}

// blockFilters are the bpf filters on tc block blk in nsPath.
func blockFilters(t *testing.T, nsPath string, blk uint32) []*netlink.BpfFilter {
	t.Helper()
	nl := netnstest.Handle(t, nsPath)
	defer nl.Close()
	flts, err := nl.FilterList(blockDev(), blk)
	if err != nil {
		t.Fatalf("filters of tc block %d: %v", blk, err)
	}
	var out []*netlink.BpfFilter
	for _, f := range flts {
		if b, ok := f.(*netlink.BpfFilter); ok {
			out = append(out, b)
		}
	}
	return out
}

// blockProgram is the program of fabric's filter on block blk (0 if
// none), checked against the block's pin under root.
func blockProgram(t *testing.T, nsPath, root string, blk uint32) ebpf.ProgramID {
	t.Helper()
	for _, b := range blockFilters(t, nsPath, blk) {
		if b.Priority != clsactPrio || b.Handle != clsactHandle {
			continue
		}
		pin := filepath.Join(root, "links", fmt.Sprintf("%s%d", blockPinPrefix, blk))
		p, err := ebpf.LoadPinnedProgram(pin, nil)
		if err != nil {
			t.Fatalf("filter on tc block %d, but its pin: %v", blk, err)
		}
		defer p.Close()
		info, _ := p.Info()
		if pid, _ := info.ID(); int(pid) != b.Id {
			t.Fatalf("%s holds program %d, the filter runs %d", pin, pid, b.Id)
		}
		return ebpf.ProgramID(b.Id)
	}
	return 0
}

func progID(t *testing.T, pi *ebpf.ProgramInfo) ebpf.ProgramID {
	t.Helper()
	id, ok := pi.ID()
	if !ok {
		t.Fatal("program info without an ID")
	}
	return id
}

// pinnedMaps are the IDs of the maps pinned under the bpf root, by name.
func (l *upgradeLab) pinnedMaps() map[string]ebpf.MapID {
	l.t.Helper()
	dir := filepath.Join(l.a.opts.BPFRoot, "maps")
	entries, err := os.ReadDir(dir)
	if err != nil {
		l.t.Fatal(err)
	}
	out := map[string]ebpf.MapID{}
	for _, e := range entries {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, e.Name()), nil)
		if err != nil {
			l.t.Fatalf("pinned map %s: %v", e.Name(), err)
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			l.t.Fatalf("map info %s: %v", e.Name(), err)
		}
		id, ok := info.ID()
		if !ok {
			l.t.Fatalf("map info %s without an ID", e.Name())
		}
		out[e.Name()] = id
	}
	return out
}

// tcpRetrans is RetransSegs of the named namespace (/proc/net/snmp).
func tcpRetrans(t *testing.T, ns string) uint64 {
	t.Helper()
	return snmpCounter(t, ns, "/proc/net/snmp", "Tcp:", "RetransSegs")
}

// tcpSpuriousRetrans is how many of a namespace's retransmissions the peer
// reported as duplicates (D-SACK): the first copy had arrived, so nothing
// was lost. An emulated guest that stalls past the retransmission timer
// makes these without any loss.
func tcpSpuriousRetrans(t *testing.T, ns string) uint64 {
	t.Helper()
	return snmpCounter(t, ns, "/proc/net/netstat", "TcpExt:", "TCPDSACKRecv")
}

// snmpCounter reads one counter of a /proc/net/snmp-style file (a header
// line and a value line per group) inside a namespace.
func snmpCounter(t *testing.T, ns, file, group, name string) uint64 {
	t.Helper()
	var head []string
	for line := range strings.Lines(netnstest.Run(t, ns, "cat", file)) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != group {
			continue
		}
		if head == nil {
			head = f
			continue
		}
		if i := slices.Index(head, name); i >= 0 && i < len(f) {
			n, err := strconv.ParseUint(f[i], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
		break
	}
	t.Fatalf("no %s %s in %s's %s", group, name, ns, file)
	return 0
}

// lineStream echoes numbered lines over a connection, one a millisecond,
// until stopped, at most limit lines, stopping at the first error.
type lineStream struct {
	lines atomic.Int64
	stop  chan struct{}
	done  chan struct{}
	err   error
	gap   time.Duration // longest wait for an echo
}

func startLineStream(c net.Conn, limit int) *lineStream {
	s := &lineStream{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for i := range limit {
			select {
			case <-s.stop:
				return
			default:
			}
			start := time.Now()
			if err := echo(c, fmt.Sprintf("line %d", i)); err != nil {
				s.err = fmt.Errorf("line %d: %w", i, err)
				return
			}
			s.gap = max(s.gap, time.Since(start))
			s.lines.Add(1)
			time.Sleep(time.Millisecond)
		}
	}()
	return s
}

func (s *lineStream) wait() {
	close(s.stop)
	<-s.done
}

var pingStats = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// TestUpgradeSwapsProgramWithoutLoss: an agent restart with another
// endpoint object swaps it into the pinned links while a ping (every
// 10 ms) and a TCP line stream run between two sandboxes: no packet is
// lost, the links run the new program on the same pinned maps, and the
// old program is gone. Then back to the original, the same way.
func TestUpgradeSwapsProgramWithoutLoss(t *testing.T) {
	testUpgradeWithoutLoss(t)
}

// TestUpgradeThroughClsact: where the kernel has no TCX (Linux 6.1; forced
// here), the programs run as clsact filters, an upgrade replaces them
// without loss all the same, and status and metrics say clsact.
func TestUpgradeThroughClsact(t *testing.T) {
	forceClsact = true
	t.Cleanup(func() { forceClsact = false })
	l := testUpgradeWithoutLoss(t)
	if l == nil {
		return
	}
	st := l.a.dp.Status(context.Background())
	if d := strings.Join(st.Details, "; "); !strings.Contains(d, "tc (clsact ingress) on 2 endpoint veths") {
		t.Errorf("status does not say clsact: %s", d)
	}
	if d := strings.Join(st.Details, "; "); !strings.Contains(d, "no TCX") {
		t.Errorf("status does not say why clsact: %s", d)
	}
	m, err := l.a.dp.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	if m.Programs["clsact-ingress"] != 2 || m.Programs["tcx-ingress"] != 0 {
		t.Errorf("programs metric %v, want clsact-ingress 2", m.Programs)
	}
}

func testUpgradeWithoutLoss(t *testing.T) *upgradeLab {
	netnstest.RequireRoot(t)
	orig, err := ebpf.LoadCollectionSpec(endpointObject)
	if err != nil {
		t.Fatal(err)
	}
	variant := markedVariant(t, orig)
	l := newUpgradeLab(t)
	if err := l.a.ping(l.b.ep.Addr.Addr(), 1); err != nil {
		t.Fatal(err)
	}
	l.b.serveEcho(t, 7100)
	conn, err := l.a.dial(l.b.ep.Addr.Addr(), 7100)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	pins := l.linkPins()
	for _, pin := range pins {
		if err := orig.Programs["from_endpoint"].Compatible(l.linkedProgram(t, pin)); err != nil {
			t.Fatalf("%s before the upgrade does not run the committed object's program: %v", pin, err)
		}
	}
	if !t.Run("original to variant", func(t *testing.T) {
		l.upgradeUnderTraffic(t, conn, variant, variant, true)
	}) {
		return nil
	}
	t.Run("variant to original", func(t *testing.T) {
		l.upgradeUnderTraffic(t, conn, nil, orig, false)
	})
	return l
}

// upgradeUnderTraffic upgrades to spec while traffic runs and checks that
// the links then run want's from_endpoint program, that nothing was lost,
// and that the marker counter moves after the upgrade if and only if
// marked.
func (l *upgradeLab) upgradeUnderTraffic(t *testing.T, conn net.Conn, spec, want *ebpf.CollectionSpec, marked bool) {
	const pings = 300 // 3 s at 10 ms; the upgrade takes a tenth of that
	to := l.b.ep.Addr.Addr()
	before := l.linkedPrograms(t)
	forwardBefore := l.a.counter("from-endpoint", "redirect", "forward")
	retransBefore := []uint64{tcpRetrans(t, l.a.sbName), tcpRetrans(t, l.b.sbName)}
	spuriousBefore := []uint64{tcpSpuriousRetrans(t, l.a.sbName), tcpSpuriousRetrans(t, l.b.sbName)}

	pingDone, pingOut := startPings(t, l.a.sbName, to, pings)
	stream := startLineStream(conn, 30000)
	// Traffic first, then the upgrade.
	for deadline := time.Now().Add(3 * time.Second); stream.lines.Load() < 100 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := stream.lines.Load(); n < 100 {
		stream.wait()
		t.Fatalf("TCP stream echoed %d lines in 3 s before the upgrade (err %v)", n, stream.err)
	}

	started := time.Now()
	l.upgrade(spec)
	took := time.Since(started)
	linesAtUpgrade := stream.lines.Load()
	markerAtUpgrade := l.a.counter(strconv.Itoa(markerDirection), strconv.Itoa(markerVerdict), strconv.Itoa(markerReason))
	select {
	case err := <-pingDone:
		stream.wait()
		t.Fatalf("ping ended before the upgrade did (it took %v), so it did not run across it: %v\n%s", took, err, pingOut.String())
	default:
	}
	t.Logf("upgrade (close, New, Sync) took %v with traffic running", took)

	pingErr := <-pingDone
	stream.wait()
	out := pingOut.String()
	if m := pingStats.FindStringSubmatch(out); m == nil {
		t.Errorf("ping: %v, no statistics:\n%s", pingErr, out)
	} else if m[1] != fmt.Sprint(pings) || m[2] != m[1] {
		t.Errorf("ping lost packets across the upgrade: %s transmitted, %s received, want %d of %d:\n%s", m[1], m[2], pings, pings, out)
	} else {
		t.Logf("ping: %s transmitted, %s received", m[1], m[2])
	}
	if stream.err != nil {
		t.Errorf("TCP stream broke: %v", stream.err)
	}
	if n := stream.lines.Load(); n <= linesAtUpgrade {
		t.Errorf("TCP stream echoed nothing after the upgrade (%d lines, %d at the upgrade)", n, linesAtUpgrade)
	}
	t.Logf("TCP stream: %d lines echoed, %d after the upgrade, longest echo %v", stream.lines.Load(), stream.lines.Load()-linesAtUpgrade, stream.gap)
	for i, ns := range []string{l.a.sbName, l.b.sbName} {
		// A retransmission the peer reports as a duplicate lost nothing.
		retrans, spurious := tcpRetrans(t, ns)-retransBefore[i], tcpSpuriousRetrans(t, ns)-spuriousBefore[i]
		if retrans > spurious {
			t.Errorf("sandbox %s retransmitted %d TCP segments across the upgrade, %d of them reported as duplicates by the peer", ns, retrans, spurious)
		} else if retrans > 0 {
			t.Logf("sandbox %s: %d spurious retransmissions (the peer had the data: a stalled timer, not a loss)", ns, retrans)
		}
	}

	l.checkUpgradedPrograms(t, before, want)
	if got := l.a.counter("from-endpoint", "redirect", "forward"); got <= forwardBefore {
		t.Errorf("from-endpoint/redirect/forward is %d, was %d before the upgrade: counters did not survive or nothing was forwarded", got, forwardBefore)
	}
	marker := l.a.counter(strconv.Itoa(markerDirection), strconv.Itoa(markerVerdict), strconv.Itoa(markerReason))
	if marked && marker <= markerAtUpgrade {
		t.Errorf("marker counter did not move after the upgrade to the variant (%d, %d at the upgrade)", marker, markerAtUpgrade)
	}
	if !marked && marker != markerAtUpgrade {
		t.Errorf("marker counter moved after the upgrade back (%d, %d at the upgrade): the variant still runs", marker, markerAtUpgrade)
	}
	t.Logf("marker counter: %d at the upgrade, %d after the traffic", markerAtUpgrade, marker)

	// The old programs are unreferenced now: the kernel frees them.
	checkProgramsFreed(t, slices.Compact(slices.Clone(before.ids))) // both links ran one program
}

// startPings starts n pings, 10 ms apart, from the namespace ns to to; the
// channel says when ping is done, the builder has what it printed. A ping
// still running at cleanup is killed.
func startPings(t *testing.T, ns string, to netip.Addr, n int) (<-chan error, *strings.Builder) {
	t.Helper()
	ping := netnstest.Cmd(ns, "ping", "-n", "-q", "-i", "0.01", "-c", fmt.Sprint(n), "-W", "1", "-w", "20", to.String())
	var out strings.Builder
	ping.Stdout, ping.Stderr = &out, &out
	if err := ping.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ping.Wait() }()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			_ = ping.Process.Kill()
		}
	})
	return done, &out
}

// linkPrograms is what the pinned links run, link by link, and the maps.
type linkPrograms struct {
	pins   []string
	ids    []ebpf.ProgramID
	tags   []string
	maps   map[ebpf.MapID]bool   // the programs' maps
	pinned map[string]ebpf.MapID // l.pinnedMaps()
}

// linkedPrograms records what the lab's links run now.
func (l *upgradeLab) linkedPrograms(t *testing.T) linkPrograms {
	lp := linkPrograms{pins: l.linkPins(), maps: map[ebpf.MapID]bool{}}
	for _, pin := range lp.pins {
		pi := l.linkedProgram(t, pin)
		lp.ids = append(lp.ids, progID(t, pi))
		lp.tags = append(lp.tags, pi.Tag)
		ids, _ := pi.MapIDs()
		for _, id := range ids {
			lp.maps[id] = true
		}
	}
	lp.pinned = l.pinnedMaps()
	return lp
}

// checkUpgradedPrograms: the links run the new program (want's), a new
// one in the kernel, on the same pinned maps as before.
func (l *upgradeLab) checkUpgradedPrograms(t *testing.T, before linkPrograms, want *ebpf.CollectionSpec) {
	t.Helper()
	for i, pin := range before.pins {
		pi := l.linkedProgram(t, pin)
		id := progID(t, pi)
		if id == before.ids[i] {
			t.Errorf("%s still runs program %d", pin, id)
		}
		if pi.Tag == before.tags[i] {
			t.Errorf("%s runs a program with the old tag %s: the objects do not differ", pin, pi.Tag)
		}
		if err := want.Programs["from_endpoint"].Compatible(pi); err != nil {
			t.Errorf("%s runs program %d (tag %s), not the upgrade's: %v", pin, id, pi.Tag, err)
		}
		t.Logf("%s: program %d (tag %s), was %d", filepath.Base(pin), id, pi.Tag, before.ids[i])
		ids, _ := pi.MapIDs()
		for _, m := range before.pinned {
			if before.maps[m] && !slices.Contains(ids, m) {
				t.Errorf("%s: new program does not use pinned map %d the old one used (uses %v)", pin, m, ids)
			}
		}
	}
	if got := l.pinnedMaps(); !maps.Equal(got, before.pinned) {
		t.Errorf("pinned maps changed across the upgrade: %v, were %v", got, before.pinned)
	}
}

// checkProgramsFreed: the kernel frees each program of ids within 5 s.
func checkProgramsFreed(t *testing.T, ids []ebpf.ProgramID) {
	t.Helper()
	freeStart := time.Now()
	for _, id := range ids {
		var err error
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			var p *ebpf.Program
			if p, err = ebpf.NewProgramFromID(id); err != nil {
				break
			}
			p.Close()
		}
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("old program %d still loaded 5 s after the upgrade (%v)", id, err)
		}
	}
	t.Logf("old programs %v freed within %v", ids, time.Since(freeStart).Round(time.Millisecond))
}
