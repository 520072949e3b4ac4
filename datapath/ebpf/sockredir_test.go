//go:build linux

package ebpf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/bpf"
	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// The datapath attaches its sockops program to the real cgroup v2 root
// (as fabricd does), so every socket of this test is seen; the programs act
// only for the lab's host namespace and its endpoint.

const (
	redirPort    = 9000  // the sandbox's server
	redirPubPort = 18090 // published on every host address
)

type sockRedirLab struct {
	t          *testing.T // the running (sub)test
	top        *testing.T // the test that owns the lab's cleanups
	name, path string     // host namespace
	opts       Options
	dp         *Datapath
	net        datapath.Network
	ep         datapath.Endpoint
}

func newSockRedirLab(t *testing.T) *sockRedirLab {
	t.Helper()
	netnstest.RequireRoot(t)
	if _, err := bpf.CgroupV2Root(); err != nil {
		t.Skipf("skipping: socket redirection needs a cgroup v2 hierarchy: %v", err)
	}
	name, path := netnstest.New(t, "fbh")
	netnstest.Run(t, name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	netnstest.Run(t, name, "ip", "link", "set", "lo", "up")
	root := filepath.Join("/sys/fs/bpf", netnstest.UniqueName("fabric-test-"))
	t.Cleanup(func() { _ = Purge(path, root) }) // after the datapath's Close, registered below
	_, sbPath := netnstest.New(t, "fbs")
	l := &sockRedirLab{t: t, top: t, name: name, path: path, opts: Options{NetNSPath: path, BPFRoot: root, XDP: XDPOff, SockRedirect: true}}
	l.net = datapath.Network{
		ID: netnstest.UniqueName("redir-"), Name: "redir", Driver: datapath.DriverBridge,
		Subnet: netip.MustParsePrefix("10.81.0.0/24"), Gateway: netip.MustParseAddr("10.81.0.1"),
		Bridge: netnstest.UniqueName("fbr"),
	}
	l.ep = datapath.Endpoint{
		ID: netnstest.UniqueName("ep-"), NetworkID: l.net.ID, NetNSPath: sbPath, IfName: "eth0",
		HostIfName: netnstest.UniqueName("fbv"), Addr: netip.MustParsePrefix("10.81.0.2/24"),
		MAC: net.HardwareAddr{0x02, 0x00, 0x0a, 0x51, 0x00, 0x02}, DefaultRoute: true,
		Ports: []datapath.PortMapping{{Proto: "tcp", HostPort: redirPubPort, Port: redirPort}},
	}
	l.start()
	ctx := context.Background()
	if err := l.dp.EnsureNetwork(ctx, l.net); err != nil {
		t.Fatalf("ensure network: %v", err)
	}
	if err := l.dp.EnsureEndpoint(ctx, l.net, l.ep); err != nil {
		t.Fatalf("ensure endpoint: %v", err)
	}
	l.serve(sbPath)
	return l
}

func (l *sockRedirLab) start() {
	l.t.Helper()
	dp, err := New(nil, l.opts)
	if err != nil {
		l.t.Fatalf("new eBPF datapath: %v", err)
	}
	l.dp = dp
	l.top.Cleanup(func() { dp.Close() })
}

// restart is an agent restart with socket redirection on or off: a new
// datapath on the same bpf root, then Sync.
func (l *sockRedirLab) restart(redirect bool) {
	l.t.Helper()
	if err := l.dp.Close(); err != nil {
		l.t.Fatalf("close datapath: %v", err)
	}
	l.opts.SockRedirect = redirect
	l.start()
	if err := l.dp.Sync(context.Background(), l.state()); err != nil {
		l.t.Fatalf("sync after restart: %v", err)
	}
}

func (l *sockRedirLab) state() datapath.State {
	return datapath.State{Networks: []datapath.Network{l.net}, Endpoints: []datapath.Endpoint{l.ep}}
}

// serve runs netnstest.HashEcho on the endpoint's port until the test ends.
func (l *sockRedirLab) serve(sbPath string) {
	var (
		mu    sync.Mutex
		conns []net.Conn // closed at the end: a removed endpoint's peers never hear a FIN
	)
	netnstest.Serve(l.t, sbPath, "tcp4", fmt.Sprintf("%s:%d", l.ep.Addr.Addr(), redirPort), 60*time.Second, func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		netnstest.HashEcho(c)
	})
	// Cleanups run last first: the connections close before Serve waits
	// for their handlers.
	l.t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
}

// dial connects from the host namespace to the published port on 127.0.0.1.
func (l *sockRedirLab) dial() *net.TCPConn {
	l.t.Helper()
	c, err := netnstest.Dial(l.path, "tcp4", fmt.Sprintf("127.0.0.1:%d", redirPubPort), 5*time.Second)
	if err != nil {
		l.t.Fatalf("dial the published port: %v", err)
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	l.t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// conns is what the socket hash holds now, as "local>remote".
func (l *sockRedirLab) conns() []string {
	l.t.Helper()
	l.dp.mu.Lock()
	defer l.dp.mu.Unlock()
	if l.dp.fwd.redir == nil {
		l.t.Fatalf("socket redirection is off: %v", l.dp.fwd.redirErr)
	}
	cs, err := l.dp.fwd.redir.Conns()
	if err != nil {
		l.t.Fatal(err)
	}
	var out []string
	for _, c := range cs {
		out = append(out, c.Local.String()+">"+c.Remote.String())
	}
	slices.Sort(out)
	return out
}

// pairOf is what the hash holds for the host side of c and its sandbox
// side.
func (l *sockRedirLab) pairOf(c *net.TCPConn) []string {
	local := c.LocalAddr().String()
	remote := fmt.Sprintf("%s:%d", l.ep.Addr.Addr(), redirPort)
	out := []string{local + ">" + remote, remote + ">" + local}
	slices.Sort(out)
	return out
}

func (l *sockRedirLab) waitConns(want []string) {
	l.t.Helper()
	var got []string
	if !netnstest.Poll(10*time.Second, func() bool { got = l.conns(); return slices.Equal(got, want) }) {
		l.t.Fatalf("socket hash holds %q, want %q", got, want)
	}
}

// redirected is the bytes the programs redirected so far (metrics).
func (l *sockRedirLab) redirected() uint64 {
	l.t.Helper()
	m, err := l.dp.Metrics()
	if err != nil {
		l.t.Fatal(err)
	}
	for _, c := range m.Counters {
		if c.Reason == "sock-redirect" && c.Verdict == "redirect" {
			return c.Bytes
		}
	}
	l.t.Fatalf("no sock-redirect counter in %v", m.Counters)
	return 0
}

func TestSockRedirDatapath(t *testing.T) {
	l := newSockRedirLab(t)

	t.Run("published port from 127.0.0.1", func(t *testing.T) { testRedirDPPublishedPort(t, l) })
	t.Run("a restart keeps redirected connections", func(t *testing.T) { testRedirDPRestart(t, l) })
	t.Run("sync puts a detached sockops program back", func(t *testing.T) { testRedirDPSyncReattaches(t, l) })
	t.Run("turned off, redirected connections go on until they close", func(t *testing.T) { testRedirDPTurnedOff(t, l) })
	t.Run("a removed endpoint's sockets leave", func(t *testing.T) { testRedirDPEndpointRemoved(t, l) })
	t.Run("purge detaches and unpins", func(t *testing.T) { testRedirDPPurge(t, l) })
}

// testRedirDPPublishedPort is TestSockRedirDatapath's subtest "published port from 127.0.0.1".
func testRedirDPPublishedPort(t *testing.T, l *sockRedirLab) {
	ctx := context.Background()
	l.t = t
	before := l.redirected()
	c := l.dial()
	l.waitConns(l.pairOf(c))
	if st := l.dp.Status(ctx); !slices.ContainsFunc(st.Details, func(d string) bool {
		return strings.HasPrefix(d, "socket redirection for host -> sandbox TCP (sockops, sk_msg)") && strings.HasSuffix(d, ": 2 sockets")
	}) {
		t.Errorf("status does not show socket redirection with 2 sockets: %q", st.Details)
	}
	const size = 16 << 20
	if err := netnstest.CheckEcho(c, size, 1); err != nil {
		t.Fatal(err)
	}
	if moved := l.redirected() - before; moved < 2*size {
		t.Errorf("%d bytes redirected, want at least %d", moved, 2*size)
	}
	c.Close()
	l.waitConns(nil)
}

// testRedirDPRestart is TestSockRedirDatapath's subtest "a restart keeps redirected connections".
func testRedirDPRestart(t *testing.T, l *sockRedirLab) {
	l.t = t
	c := l.dial()
	pair := l.pairOf(c)
	l.waitConns(pair)
	s := netnstest.NewStream(c, 2)
	if err := s.Send(1 << 20); err != nil {
		t.Fatal(err)
	}
	l.restart(true)
	l.waitConns(pair)
	before := l.redirected()
	if err := s.Send(4 << 20); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if err := s.Finish(); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if moved := l.redirected() - before; moved < 2*(4<<20) {
		t.Errorf("%d bytes redirected after the restart, want at least %d", moved, 2*(4<<20))
	}
	c.Close()
	l.waitConns(nil)
}

// testRedirDPSyncReattaches is TestSockRedirDatapath's subtest "sync puts a detached sockops program back".
func testRedirDPSyncReattaches(t *testing.T, l *sockRedirLab) {
	ctx := context.Background()
	l.t = t
	if err := detach(l.dp.fwd.linkPin(pinSockOps)); err != nil {
		t.Fatal(err)
	}
	if l.dp.fwd.sockOpsAttached() {
		t.Fatal("sockops still attached after detach")
	}
	if err := l.dp.Sync(ctx, l.state()); err != nil {
		t.Fatalf("sync: %v", err)
	}
	if !l.dp.fwd.sockOpsAttached() {
		t.Fatal("sync did not attach sockops again")
	}
	m, _ := l.dp.Metrics()
	if m.Repairs[datapath.RepairProgram] == 0 {
		t.Errorf("repair not counted: %v", m.Repairs)
	}
	c := l.dial()
	l.waitConns(l.pairOf(c))
}

// testRedirDPTurnedOff is TestSockRedirDatapath's subtest "turned off, redirected connections go on until they close".
func testRedirDPTurnedOff(t *testing.T, l *sockRedirLab) {
	ctx := context.Background()
	l.t = t
	c := l.dial()
	l.waitConns(l.pairOf(c))
	s := netnstest.NewStream(c, 5)
	if err := s.Send(1 << 20); err != nil {
		t.Fatal(err)
	}
	l.restart(false)
	if _, err := os.Stat(l.dp.fwd.linkPin(pinSockOps)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("sockops link pin after turning off: %v", err)
	}
	if st := l.dp.Status(ctx); !slices.Contains(st.Details, "socket redirection for host -> sandbox TCP: off (--sock-redirect not set)") {
		t.Errorf("status does not say redirection is off: %q", st.Details)
	}
	// The pinned socket hash stays while it holds the connection.
	socks := filepath.Join(l.opts.BPFRoot, "maps", "redir_socks")
	if _, err := os.Stat(socks); err != nil {
		t.Fatalf("redir_socks unpinned with a connection in it: %v", err)
	}
	if err := s.Send(2 << 20); err != nil {
		t.Fatalf("after turning off: %v", err)
	}
	if err := s.Finish(); err != nil {
		t.Fatalf("after turning off: %v", err)
	}
	c.Close()
	// A new connection is not admitted, and works over the veth.
	c2 := l.dial()
	if err := netnstest.CheckEcho(c2, 1<<20, 6); err != nil {
		t.Fatal(err)
	}
	c2.Close()
	if !netnstest.Poll(10*time.Second, func() bool {
		if err := l.dp.Sync(ctx, l.state()); err != nil {
			t.Fatalf("sync: %v", err)
		}
		_, err := os.Stat(socks)
		return errors.Is(err, os.ErrNotExist)
	}) {
		t.Fatal("redir_socks still pinned after its connections closed")
	}
	l.restart(true)
}

// testRedirDPEndpointRemoved is TestSockRedirDatapath's subtest "a removed endpoint's sockets leave".
func testRedirDPEndpointRemoved(t *testing.T, l *sockRedirLab) {
	ctx := context.Background()
	l.t = t
	c := l.dial()
	l.waitConns(l.pairOf(c))
	if err := l.dp.DeleteEndpoint(ctx, l.net, l.ep); err != nil {
		t.Fatal(err)
	}
	l.waitConns(nil)
}

// testRedirDPPurge is TestSockRedirDatapath's subtest "purge detaches and unpins".
func testRedirDPPurge(t *testing.T, l *sockRedirLab) {
	l.t = t
	id, ok := l.dp.fwd.progID(l.dp.fwd.redir.SockOps())
	if !ok {
		t.Fatal("no program ID")
	}
	root := l.dp.fwd.redirCgroup
	if !slices.Contains(sockOpsOn(t, root), id) {
		t.Fatalf("sockops program %d not attached to %s", id, root)
	}
	if err := l.dp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := Purge(l.path, l.opts.BPFRoot); err != nil {
		t.Fatalf("purge: %v", err)
	}
	if slices.Contains(sockOpsOn(t, root), id) {
		t.Errorf("sockops program %d still attached to %s after purge", id, root)
	}
	if _, err := os.Stat(l.opts.BPFRoot); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("bpf root %s after purge: %v", l.opts.BPFRoot, err)
	}
}

// sockOpsOn lists the sockops programs attached to the cgroup at path.
func sockOpsOn(t *testing.T, path string) []ebpf.ProgramID {
	t.Helper()
	fd, err := unix.Open(path, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	res, err := link.QueryPrograms(link.QueryOptions{Target: fd, Attach: ebpf.AttachCGroupSockOps})
	if err != nil {
		t.Fatalf("query sockops on %s: %v", path, err)
	}
	var ids []ebpf.ProgramID
	for _, p := range res.Programs {
		ids = append(ids, p.ID)
	}
	return ids
}

// TestSockRedirUnsupported: on a kernel without the programs the datapath
// runs without them, says so in its status (not as a warning), and a
// published port still answers 127.0.0.1 through the veth.
func TestSockRedirUnsupported(t *testing.T) {
	orig := loadSockRedir
	loadSockRedir = func(*bpf.Objects, *ebpf.CollectionOptions) (*bpf.SockRedir, error) {
		return nil, fmt.Errorf("load socket redirection: map type sockhash: %w", ebpf.ErrNotSupported)
	}
	t.Cleanup(func() { loadSockRedir = orig })
	l := newSockRedirLab(t)
	if l.dp.fwd.redir != nil || !errors.Is(l.dp.fwd.redirErr, ErrUnsupported) {
		t.Fatalf("redirection %v, error %v; want off and unsupported", l.dp.fwd.redir, l.dp.fwd.redirErr)
	}
	st := l.dp.Status(context.Background())
	if !slices.ContainsFunc(st.Details, func(d string) bool { return strings.HasPrefix(d, "socket redirection for host -> sandbox TCP: off: ") }) {
		t.Errorf("status does not say redirection is off: %q", st.Details)
	}
	for _, w := range st.Warnings {
		if strings.Contains(w, "redirection") {
			t.Errorf("a missing kernel feature is a warning: %q", w)
		}
	}
	if _, err := os.Stat(l.dp.fwd.linkPin(pinSockOps)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("sockops link pinned without redirection: %v", err)
	}
	if err := netnstest.CheckEcho(l.dial(), 4<<20, 3); err != nil {
		t.Fatal(err)
	}
}

// TestDefaultTCPMem0: the estimate a lab agent uses is near what the
// kernel set (it used the pages free at boot, not MemTotal).
func TestDefaultTCPMem0(t *testing.T) {
	mem, err := bpf.TCPMemPages()
	if err != nil {
		t.Skipf("skipping: tcp_mem not readable here: %v", err)
	}
	est, err := defaultTCPMem0()
	if err != nil {
		t.Fatal(err)
	}
	if est < mem[0]*3/4 || est > mem[0]*5/4 {
		t.Errorf("estimate %d pages, tcp_mem[0] is %d", est, mem[0])
	}
}
