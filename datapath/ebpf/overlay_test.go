//go:build linux

package ebpf

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/datapathtest"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// The two-host overlay test: "hosts" h1 and h2 are namespaces joined by
// an underlay veth pair, each with its own eBPF datapath (own bpf root),
// one overlay network on both, one sandbox per host.

const (
	labTunnelPort = 8472 // not the default, so that Tunnel.Port is seen to apply
	labGossipPort = 7946 // guarded: a listener in the host namespace stands for the agent's
	labVNI        = 4242
)

type overlayHost struct {
	t          *testing.T
	name, path string // host namespace
	underlay   string // underlay veth, the uplink
	local      netip.Addr
	opts       Options
	dp         *Datapath
	sbName     string
	ep         datapath.Endpoint
}

type overlayLab struct {
	h1, h2 *overlayHost
	net    datapath.Network
}

func randByte(t *testing.T) byte {
	var b [1]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return b[0]
}

func newOverlayLab(t *testing.T) *overlayLab {
	t.Helper()
	netnstest.RequireRoot(t)
	octet := randByte(t)
	l := &overlayLab{net: datapath.Network{
		ID: netnstest.UniqueName("ovl-"), Name: "ovl", Driver: datapath.DriverOverlay,
		Subnet: netip.MustParsePrefix("10.77.0.0/24"), Gateway: netip.MustParseAddr("10.77.0.1"),
		Bridge: netnstest.UniqueName("fbr"), MTU: 1450, VNI: labVNI,
	}}
	l.h1 = &overlayHost{t: t, underlay: netnstest.UniqueName("fu"), local: netip.AddrFrom4([4]byte{198, 18, octet, 1})}
	l.h2 = &overlayHost{t: t, underlay: netnstest.UniqueName("fu"), local: netip.AddrFrom4([4]byte{198, 18, octet, 2})}
	for _, h := range []*overlayHost{l.h1, l.h2} {
		h.name, h.path = netnstest.New(t, "fbh")
		netnstest.Run(t, h.name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
		netnstest.Run(t, h.name, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
	}
	netnstest.Run(t, l.h1.name, "ip", "link", "add", l.h1.underlay, "type", "veth", "peer", "name", l.h2.underlay, "netns", l.h2.name)
	for i, h := range []*overlayHost{l.h1, l.h2} {
		netnstest.Run(t, h.name, "ip", "addr", "add", h.local.String()+"/24", "dev", h.underlay)
		netnstest.Run(t, h.name, "ip", "link", "set", h.underlay, "up")
		h.opts = Options{
			NetNSPath: h.path, BPFRoot: filepath.Join("/sys/fs/bpf", netnstest.UniqueName("fabric-test-")),
			Uplink: h.underlay, XDP: XDPOff,
			Tunnel:     datapath.Tunnel{Local: h.local, Port: labTunnelPort},
			GuardPorts: []datapath.HostPort{{Proto: "udp", Port: labTunnelPort}, {Proto: "tcp", Port: labGossipPort}, {Proto: "udp", Port: labGossipPort}},
		}
		root := h.opts.BPFRoot
		t.Cleanup(func() { _ = os.RemoveAll(root) }) // after the datapath's Close, registered below
		h.start()
		h.addSandbox(l.net, byte(2+i))
	}
	ctx := context.Background()
	for _, h := range []*overlayHost{l.h1, l.h2} {
		if err := h.dp.EnsureNetwork(ctx, l.net); err != nil {
			t.Fatalf("%s: ensure network: %v", h.name, err)
		}
		if err := h.dp.EnsureEndpoint(ctx, l.net, h.ep); err != nil {
			t.Fatalf("%s: ensure endpoint: %v", h.name, err)
		}
	}
	l.setRemotes(t)
	return l
}

// addSandbox makes h's sandbox and describes its endpoint on n: the
// address host in n's subnet, the MAC 02:00 and that address.
func (h *overlayHost) addSandbox(n datapath.Network, host byte) {
	h.t.Helper()
	var sbPath string
	h.sbName, sbPath = netnstest.New(h.t, "fbs")
	a := n.Subnet.Addr().As4()
	a[3] = host
	h.ep = datapath.Endpoint{
		ID: netnstest.UniqueName("ep-"), NetworkID: n.ID, NetNSPath: sbPath, IfName: "eth0",
		HostIfName: netnstest.UniqueName("fbv"), Addr: netip.PrefixFrom(netip.AddrFrom4(a), n.Subnet.Bits()),
		MAC: net.HardwareAddr{0x02, 0x00, a[0], a[1], a[2], a[3]}, DefaultRoute: true,
	}
}

// hosts are the lab's two hosts and their endpoints' addresses.
func (l *overlayLab) hosts() (h1, h2 *overlayHost, a1, a2 netip.Addr) {
	return l.h1, l.h2, l.h1.ep.Addr.Addr(), l.h2.ep.Addr.Addr()
}

// start opens the host's datapath (again, for a restart).
func (h *overlayHost) start() {
	h.t.Helper()
	dp, err := New(nil, h.opts)
	if err != nil {
		h.t.Fatalf("%s: new eBPF datapath: %v", h.name, err)
	}
	h.dp = dp
	h.t.Cleanup(func() { dp.Close() })
}

// remote is h's endpoint as the other host knows it.
func (h *overlayHost) remote() datapath.Remote {
	return datapath.Remote{Addr: h.ep.Addr.Addr(), MAC: h.ep.MAC, Node: h.local}
}

func (l *overlayLab) setRemotes(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	if err := l.h1.dp.SetRemotes(ctx, l.net, []datapath.Remote{l.h2.remote()}); err != nil {
		t.Fatalf("h1: set remotes: %v", err)
	}
	if err := l.h2.dp.SetRemotes(ctx, l.net, []datapath.Remote{l.h1.remote()}); err != nil {
		t.Fatalf("h2: set remotes: %v", err)
	}
}

func (l *overlayLab) state(h *overlayHost) datapath.State {
	other := l.h1
	if h == l.h1 {
		other = l.h2
	}
	return datapath.State{
		Networks: []datapath.Network{l.net}, Endpoints: []datapath.Endpoint{h.ep},
		Remotes: map[string][]datapath.Remote{l.net.ID: {other.remote()}},
	}
}

// ping pings to from h's sandbox: count packets, 1 s deadline each.
func (h *overlayHost) ping(to netip.Addr, count int) error {
	out, err := netnstest.Cmd(h.sbName, "ping", "-n", "-q", "-c", fmt.Sprint(count), "-i", "0.2", "-W", "1", "-w", fmt.Sprint(count+2), to.String()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v\n%s", to, h.sbName, err, out)
	}
	return nil
}

// serveEcho runs a line echo server in h's sandbox until the test ends.
func (h *overlayHost) serveEcho(t *testing.T, port int) {
	t.Helper()
	netnstest.Serve(t, h.ep.NetNSPath, "tcp4", fmt.Sprintf("%s:%d", h.ep.Addr.Addr(), port), 60*time.Second, func(c net.Conn) { _, _ = io.Copy(c, c) })
}

// dial connects from h's sandbox.
func (h *overlayHost) dial(to netip.Addr, port int) (net.Conn, error) {
	return netnstest.Dial(h.ep.NetNSPath, "tcp4", fmt.Sprintf("%s:%d", to, port), 3*time.Second)
}

func echo(c net.Conn, msg string) error {
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintln(c, msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got, err := bufio.NewReader(io.LimitReader(c, int64(len(msg)+1))).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if strings.TrimSpace(got) != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

func (h *overlayHost) tunnelIfindex() int {
	h.t.Helper()
	nl := netnstest.Handle(h.t, h.path)
	defer nl.Close()
	l, err := nl.LinkByName(tunDevice)
	if err != nil {
		return 0
	}
	return l.Attrs().Index
}

// counter is the datapath's counter for direction/verdict/reason.
func (h *overlayHost) counter(dir, verdict, reason string) uint64 {
	h.t.Helper()
	return datapathtest.Counter(h.t, h.dp, dir, verdict, reason)
}

// waitCounter waits (up to 3 s) for the counter to pass from.
func (h *overlayHost) waitCounter(dir, verdict, reason string, from uint64) bool {
	h.t.Helper()
	return datapathtest.WaitCounter(h.t, h.dp, dir, verdict, reason, from)
}

func TestOverlayTwoHosts(t *testing.T) {
	l := newOverlayLab(t)
	h1, h2, a1, a2 := l.hosts()
	ctx := context.Background()

	if ix := h1.tunnelIfindex(); ix == 0 {
		t.Fatalf("h1 has no %s", tunDevice)
	}
	if err := h1.ping(a2, 3); err != nil {
		t.Fatal(err)
	}
	if err := h2.ping(a1, 3); err != nil {
		t.Fatal(err)
	}
	if h1.counter("from-endpoint", "redirect", "to-tunnel") == 0 || h2.counter("from-tunnel", "redirect", "forward") == 0 {
		t.Errorf("tunnel counters did not move: h1 tx %d, h2 rx %d",
			h1.counter("from-endpoint", "redirect", "to-tunnel"), h2.counter("from-tunnel", "redirect", "forward"))
	}

	h1.serveEcho(t, 7001)
	h2.serveEcho(t, 7002)
	for _, c := range []struct {
		from *overlayHost
		to   netip.Addr
		port int
	}{{h1, a2, 7002}, {h2, a1, 7001}} {
		conn, err := c.from.dial(c.to, c.port)
		if err != nil {
			t.Fatalf("TCP from %s to %s: %v", c.from.ep.Addr, c.to, err)
		}
		// A bigger message too: a full-MTU segment must cross.
		for _, msg := range []string{"hello", strings.Repeat("x", 3000)} {
			if err := echo(conn, msg); err != nil {
				t.Errorf("TCP from %s to %s: %v", c.from.ep.Addr, c.to, err)
			}
		}
		conn.Close()
	}

	st := h1.dp.Status(ctx)
	if !strings.Contains(strings.Join(st.Details, "\n"), fmt.Sprintf("tunnel %s (flow-based VXLAN, UDP port %d", tunDevice, labTunnelPort)) ||
		!strings.Contains(strings.Join(st.Details, "\n"), "1 remote endpoints") {
		t.Errorf("status details lack the tunnel: %q", st.Details)
	}
	if want := fmt.Sprintf("host ports closed to sandboxes: tcp/%d udp/%d udp/%d (on every host); at most %d unanswered", labGossipPort, labGossipPort, labTunnelPort, datapath.DefaultConntrackPending); !strings.Contains(strings.Join(st.Details, "\n"), want) {
		t.Errorf("status details lack %q: %q", want, st.Details)
	}

	t.Run("decap checks", func(t *testing.T) { testDecapDrops(t, l) })

	t.Run("restart keeps a connection", func(t *testing.T) { testRestartKeepsConnection(t, l) })

	t.Run("idempotent", func(t *testing.T) { testOverlayIdempotent(t, l) })

	t.Run("invalid remotes are skipped, the rest stays", func(t *testing.T) { testInvalidRemotesSkipped(t, l) })

	t.Run("sandbox cannot reach fabric's host ports", func(t *testing.T) { testGuardPorts(t, l) })

	t.Run("no remotes, no reach", func(t *testing.T) { testNoRemotesNoReach(t, l) })

	t.Run("sync without overlay removes the tunnel", func(t *testing.T) { testSyncRemovesTunnel(t, l) })
}

// testRestartKeepsConnection: a TCP connection across the overlay survives
// closing and reopening h1's datapath, and the restart keeps the tunnel
// device.
func testRestartKeepsConnection(t *testing.T, l *overlayLab) {
	h1, _, _, a2 := l.hosts()
	ctx := context.Background()
	conn, err := h1.dial(a2, 7002)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := echo(conn, "before"); err != nil {
		t.Fatal(err)
	}
	ix := h1.tunnelIfindex()
	if err := h1.dp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := echo(conn, "while down"); err != nil {
		t.Errorf("agent down: %v", err)
	}
	h1.start()
	if err := echo(conn, "restarted"); err != nil {
		t.Errorf("after New: %v", err)
	}
	if err := h1.dp.Sync(ctx, l.state(h1)); err != nil {
		t.Fatalf("sync after restart: %v", err)
	}
	if err := echo(conn, "synced"); err != nil {
		t.Errorf("after Sync: %v", err)
	}
	if got := h1.tunnelIfindex(); got != ix {
		t.Errorf("%s was recreated by the restart (ifindex %d, was %d)", tunDevice, got, ix)
	}
}

// testOverlayIdempotent: ensuring, setting remotes and syncing again changes
// nothing.
func testOverlayIdempotent(t *testing.T, l *overlayLab) {
	h1, h2, a1, _ := l.hosts()
	ctx := context.Background()
	ix := h2.tunnelIfindex()
	for range 2 {
		if err := h2.dp.EnsureNetwork(ctx, l.net); err != nil {
			t.Fatal(err)
		}
		if err := h2.dp.EnsureEndpoint(ctx, l.net, h2.ep); err != nil {
			t.Fatal(err)
		}
		if err := h2.dp.SetRemotes(ctx, l.net, []datapath.Remote{h1.remote()}); err != nil {
			t.Fatal(err)
		}
		if err := h2.dp.Sync(ctx, l.state(h2)); err != nil {
			t.Fatal(err)
		}
	}
	if got := h2.tunnelIfindex(); got != ix {
		t.Errorf("%s recreated (ifindex %d, was %d)", tunDevice, got, ix)
	}
	if err := h2.ping(a1, 1); err != nil {
		t.Error(err)
	}
}

// testInvalidRemotesSkipped: a bad remote among good ones is skipped and
// counted; the good ones still work.
func testInvalidRemotesSkipped(t *testing.T, l *overlayLab) {
	h1, h2, _, a2 := l.hosts()
	ctx := context.Background()
	good := h2.remote()
	for _, bad := range []datapath.Remote{
		{Addr: netip.MustParseAddr("10.78.0.9"), MAC: good.MAC, Node: good.Node},
		{Addr: netip.MustParseAddr("10.77.0.9"), MAC: good.MAC[:5], Node: good.Node},
		{Addr: netip.MustParseAddr("10.77.0.9"), MAC: net.HardwareAddr{1, 0, 0x5e, 0, 0, 1}, Node: good.Node},
		{Addr: netip.MustParseAddr("10.77.0.9"), MAC: good.MAC},
		{Addr: netip.MustParseAddr("10.77.0.9"), MAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}, Node: h1.local},
		{Addr: netip.MustParseAddr("10.77.0.9"), MAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}, Node: netip.MustParseAddr("127.0.0.1")},
		{Addr: good.Addr, MAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}, Node: good.Node},
		{Addr: l.net.Gateway, MAC: good.MAC, Node: good.Node},
	} {
		if err := h1.dp.SetRemotes(ctx, l.net, []datapath.Remote{good, bad}); err != nil {
			t.Errorf("SetRemotes(good, %+v): %v, want the bad one skipped", bad, err)
		}
		if err := h1.ping(a2, 1); err != nil {
			t.Error(err)
		}
	}
	m, err := h1.dp.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	var skipped uint64
	for _, n := range m.SkippedRemotes {
		skipped += n
	}
	if skipped < 8 {
		t.Errorf("skipped remotes counted %v, want 8 in all", m.SkippedRemotes)
	}
}

// testNoRemotesNoReach: without a remote entry nothing crosses, and the drop
// is counted.
func testNoRemotesNoReach(t *testing.T, l *overlayLab) {
	h1, _, _, a2 := l.hosts()
	ctx := context.Background()
	if err := h1.dp.SetRemotes(ctx, l.net, nil); err != nil {
		t.Fatal(err)
	}
	before := h1.counter("from-endpoint", "drop", "no-remote")
	if err := h1.ping(a2, 1); err == nil {
		t.Error("ping crossed without a remote entry")
	}
	if !h1.waitCounter("from-endpoint", "drop", "no-remote", before) {
		t.Error("no-remote drop not counted")
	}
	l.setRemotes(t)
	if err := h1.ping(a2, 1); err != nil {
		t.Error(err)
	}
}

// testSyncRemovesTunnel: a Sync without the overlay network removes the
// tunnel device and its pin.
func testSyncRemovesTunnel(t *testing.T, l *overlayLab) {
	h1, h2, _, a2 := l.hosts()
	ctx := context.Background()
	if err := h2.dp.Sync(ctx, datapath.State{}); err != nil {
		t.Fatal(err)
	}
	if ix := h2.tunnelIfindex(); ix != 0 {
		t.Errorf("%s still there (ifindex %d)", tunDevice, ix)
	}
	if _, err := os.Stat(filepath.Join(h2.opts.BPFRoot, "links", pinTunnelIngress)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("tunnel link pin still there: %v", err)
	}
	if err := h1.ping(a2, 1); err == nil {
		t.Error("h2's endpoint still reachable after h2 dropped the network")
	}
}

func TestCheckOverlay(t *testing.T) {
	n := datapath.Network{ID: "o1", Driver: datapath.DriverOverlay, VNI: 7}
	other := datapath.Network{ID: "o2", Driver: datapath.DriverOverlay, VNI: 7}
	for _, c := range []struct {
		name   string
		tunnel datapath.Tunnel
		n      datapath.Network
		nets   map[string]netState
	}{
		{"no tunnel address", datapath.Tunnel{}, n, nil},
		{"IPv6 tunnel address", datapath.Tunnel{Local: netip.MustParseAddr("2001:db8::1")}, n, nil},
		{"VNI 0", datapath.Tunnel{Local: netip.MustParseAddr("192.0.2.1")}, datapath.Network{ID: "o1", Driver: datapath.DriverOverlay}, nil},
		{"VNI over 24 bits", datapath.Tunnel{Local: netip.MustParseAddr("192.0.2.1")}, datapath.Network{ID: "o1", Driver: datapath.DriverOverlay, VNI: 1 << 24}, nil},
		{"VNI taken", datapath.Tunnel{Local: netip.MustParseAddr("192.0.2.1")}, n, map[string]netState{"o2": {net: other}}},
	} {
		f := &Forwarder{opts: Options{Tunnel: c.tunnel}, nets: c.nets}
		if err := f.checkOverlay(c.n); !errors.Is(err, datapath.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", c.name, err)
		}
	}
	f := &Forwarder{opts: Options{Tunnel: datapath.Tunnel{Local: netip.MustParseAddr("192.0.2.1")}}, nets: map[string]netState{"o1": {net: n}}}
	if err := f.checkOverlay(n); err != nil {
		t.Errorf("re-ensuring a network with its own VNI: %v", err)
	}
}

// TestIncompatiblePinsRecreated: maps pinned by a build with another
// layout (here: networks before it had a VNI) are recreated, not reused.
func TestIncompatiblePinsRecreated(t *testing.T) {
	name, path := netnstest.New(t, "fbh")
	netnstest.Run(t, name, "ip", "link", "set", "lo", "up")
	root := filepath.Join("/sys/fs/bpf", netnstest.UniqueName("fabric-test-"))
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	if err := ensureBPFFS(root); err != nil {
		t.Fatal(err)
	}
	mapID := func(name string) ebpf.MapID {
		t.Helper()
		m, err := ebpf.LoadPinnedMap(filepath.Join(root, "maps", name), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		info, err := m.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		return id
	}
	first, err := New(nil, Options{NetNSPath: path, BPFRoot: root, XDP: XDPOff})
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	ctBefore := mapID("ct")

	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 20, MaxEntries: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	_ = os.Remove(filepath.Join(root, "maps", "networks"))
	if err := old.Pin(filepath.Join(root, "maps", "networks")); err != nil {
		t.Fatal(err)
	}
	dp, err := New(nil, Options{NetNSPath: path, BPFRoot: root, XDP: XDPOff})
	if err != nil {
		t.Fatalf("new with an old pinned map: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	if got := mapID("ct"); got != ctBefore {
		t.Errorf("the connection table was recreated (map %d, was %d) because another map changed", got, ctBefore)
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(root, "maps", "networks"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.ValueSize() != 24 {
		t.Errorf("pinned networks map has %d-byte values, want the new 24", m.ValueSize())
	}

	// Another conntrack size: only the connection table is made anew,
	// and every program loads onto it.
	netsBefore := mapID("networks")
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	resized, err := New(nil, Options{NetNSPath: path, BPFRoot: root, XDP: XDPOff, ConntrackMax: 4096})
	if err != nil {
		t.Fatalf("new with --conntrack-max 4096: %v", err)
	}
	t.Cleanup(func() { resized.Close() })
	if got := mapID("networks"); got != netsBefore {
		t.Errorf("networks map recreated by a conntrack resize")
	}
	if mapID("ct") == ctBefore {
		t.Error("connection table not recreated at its new size")
	}
	if st := resized.Status(context.Background()); !strings.Contains(strings.Join(st.Details, "\n"), "of 4096 entries") {
		t.Errorf("status does not show the new size: %q", st.Details)
	}
	if _, err := New(nil, Options{NetNSPath: path, BPFRoot: root, XDP: XDPOff, ConntrackMax: 10}); !errors.Is(err, datapath.ErrInvalid) {
		t.Errorf("conntrack size 10: %v, want ErrInvalid", err)
	}
}
