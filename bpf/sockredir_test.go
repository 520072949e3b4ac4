//go:build linux

package bpf

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// Socket redirection is tested like the socket hooks (sock_test.go): the
// programs are attached to a cgroup of the test's own, in the sockLab's
// namespaces. sockops runs for the cgroup of the process that made a
// socket (for an accepted one, of the listener), so this test process
// moves itself into that cgroup for the test's duration: its clients in
// the "host" namespace and its servers in the "sandbox" namespace are then
// both seen.

const (
	redirEchoPort  = 9000 // in the sandbox: echo, then the hash of what came
	redirResetPort = 9001 // in the sandbox: resets, or waits to be reset
	redirPubEcho   = 18090
	redirPubReset  = 18091
	redirHostPort  = 19000 // in the host namespace: unrelated to fabric
	redirHostPort2 = 19001 // in the host namespace, for a sandbox client
	redirDualPort  = 9002  // in the sandbox: echo on a dual-stack [::] socket
	redirPubDual   = 18092
	redirGatePort  = 9003 // in the sandbox: reads once let through the gate, answers the hash
	redirPubGate   = 18093
)

// noMemLimit is a memory limit TCP never reaches.
const noMemLimit = 1 << 62

type redirLab struct {
	*sockLab
	redir   *SockRedir
	sbPath  string
	resetCh chan error    // what the reset server's read saw after the client reset
	gate    chan struct{} // one token lets one connection of the gate server read
}

func newRedirLab(t *testing.T) *redirLab {
	t.Helper()
	l := &redirLab{sockLab: newSockLab(t), resetCh: make(chan error, 4), gate: make(chan struct{}, 4)}
	o := l.objs
	netID := NetID(77)
	gw := ip(sockHostVeth)
	if err := o.PutNetwork(Network{ID: netID, Subnet: netip.MustParsePrefix("10.77.0.0/24"), Gateway: gw, RouterMAC: mac("02:fb:00:00:00:77")}); err != nil {
		t.Fatal(err)
	}
	if err := o.PutEndpoint(Endpoint{HostIfindex: 4077, Addr: ip(sockSandboxIP), MAC: mac("02:00:0a:4d:00:02"), Network: netID}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []Port{
		{Proto: ProtoTCP, HostPort: redirPubEcho, Target: ip(sockSandboxIP), TargetPort: redirEchoPort},
		{Proto: ProtoTCP, HostPort: redirPubReset, Target: ip(sockSandboxIP), TargetPort: redirResetPort},
		{Proto: ProtoTCP, HostPort: redirPubDual, Target: ip(sockSandboxIP), TargetPort: redirDualPort},
		{Proto: ProtoTCP, HostPort: redirPubGate, Target: ip(sockSandboxIP), TargetPort: redirGatePort},
	} {
		if err := o.PutPort(p); err != nil {
			t.Fatal(err)
		}
	}
	r, err := LoadSockRedir(o, nil)
	if errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("skipping: kernel lacks sockops, sk_msg or socket storage: %v", err)
	}
	if err != nil {
		t.Fatalf("load socket redirection: %v", err)
	}
	closeAtEnd(t, "socket redirection", r)
	if err := r.AttachMsg(); err != nil {
		t.Fatal(err)
	}
	if err := r.SetMemMax(noMemLimit); err != nil {
		t.Fatal(err)
	}
	lk, err := r.AttachCgroup(l.cgroup)
	if err != nil {
		t.Fatal(err)
	}
	closeAtEnd(t, "sockops link", lk)
	l.redir = r
	l.sbPath = l.sandbox
	enterCgroup(t, l.cgroup)
	l.servers(t)
	return l
}

// enterCgroup moves this process into the cgroup dir until the test ends.
func enterCgroup(t *testing.T, dir string) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var orig string
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			orig = p
		}
	}
	root, err := CgroupV2Root()
	if err != nil || orig == "" {
		t.Fatalf("own cgroup: %q, root %v", orig, err)
	}
	pid := []byte(strconv.Itoa(os.Getpid()))
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), pid, 0o644); err != nil {
		t.Fatalf("enter cgroup %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(filepath.Join(root, orig, "cgroup.procs"), pid, 0o644); err != nil {
			t.Errorf("return to cgroup %s: %v", orig, err)
		}
	})
}

// listen opens a TCP listener in nsPath and serves each connection with
// serve until the test ends. An addr in brackets is a dual-stack one.
func listen(t *testing.T, nsPath, addr string, serve func(*net.TCPConn)) {
	t.Helper()
	network := "tcp4"
	if strings.HasPrefix(addr, "[") {
		network = "tcp"
	}
	netnstest.Serve(t, nsPath, network, addr, 60*time.Second, func(c net.Conn) { serve(c.(*net.TCPConn)) })
}

func (l *redirLab) servers(t *testing.T) {
	listen(t, l.sbPath, fmt.Sprintf("%s:%d", sockSandboxIP, redirEchoPort), func(c *net.TCPConn) { netnstest.HashEcho(c) })
	listen(t, l.sbPath, fmt.Sprintf("%s:%d", sockSandboxIP, redirResetPort), func(c *net.TCPConn) {
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil {
			return
		}
		switch b[0] {
		case 'S': // the server resets
			c.SetLinger(0)
			c.Close()
		case 'C': // the client resets after the answer
			c.Write([]byte("y"))
			_, err := io.ReadFull(c, b)
			l.resetCh <- err
		}
	})
	listen(t, l.sbPath, fmt.Sprintf("%s:%d", sockSandboxIP, redirGatePort), func(c *net.TCPConn) {
		select {
		case <-l.gate:
		case <-time.After(30 * time.Second):
			return
		}
		h := sha256.New()
		if _, err := io.Copy(h, c); err == nil {
			c.Write(h.Sum(nil))
		}
	})
	listen(t, l.sbPath, fmt.Sprintf("[::]:%d", redirDualPort), func(c *net.TCPConn) { netnstest.HashEcho(c) })
	listen(t, l.host, fmt.Sprintf("127.0.0.1:%d", redirHostPort), func(c *net.TCPConn) { netnstest.HashEcho(c) })
	listen(t, l.host, fmt.Sprintf("0.0.0.0:%d", redirHostPort2), func(c *net.TCPConn) { netnstest.HashEcho(c) })
}

func dialIn(t *testing.T, nsPath, addr string) *net.TCPConn {
	t.Helper()
	c, err := netnstest.Dial(nsPath, "tcp4", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, nsPath, err)
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	return c.(*net.TCPConn)
}

// waitConns waits until the hash holds exactly want.
func (l *redirLab) waitConns(t *testing.T, want []RedirConn) {
	t.Helper()
	key := func(c RedirConn) string { return c.Local.String() + ">" + c.Remote.String() }
	var wantKeys []string
	for _, c := range want {
		wantKeys = append(wantKeys, key(c))
	}
	slices.Sort(wantKeys)
	var got []string
	for range 500 {
		conns, err := l.redir.Conns()
		if err != nil {
			t.Fatal(err)
		}
		got = got[:0]
		for _, c := range conns {
			got = append(got, key(c))
		}
		slices.Sort(got)
		if slices.Equal(got, wantKeys) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("redir_socks holds %q, want %q", got, wantKeys)
}

func addrPort(a net.Addr) netip.AddrPort { return a.(*net.TCPAddr).AddrPort() }

// pair is the two keys a redirected host -> sandbox connection puts in
// the hash.
func pair(c *net.TCPConn, target string) []RedirConn {
	local, remote := addrPort(c.LocalAddr()), netip.MustParseAddrPort(target)
	return []RedirConn{{Local: local, Remote: remote}, {Local: remote, Remote: local}}
}

// echoTarget is the sandbox's echo server, behind redirPubEcho.
func (l *redirLab) echoTarget() string { return fmt.Sprintf("%s:%d", sockSandboxIP, redirEchoPort) }

func TestSockRedir(t *testing.T) {
	l := newRedirLab(t)

	t.Run("large transfer both ways, only fabric's connections in the map", func(t *testing.T) { testSockRedirLargeTransfer(t, l) })
	t.Run("to the endpoint's own address", func(t *testing.T) { testSockRedirOwnAddress(t, l) })
	t.Run("dual-stack server", func(t *testing.T) { testSockRedirDualStack(t, l) })
	t.Run("peer never joins: TCP as usual", func(t *testing.T) { testSockRedirPeerNeverJoins(t, l) })
	t.Run("many concurrent connections", func(t *testing.T) { testSockRedirManyConns(t, l) })
	t.Run("server resets", func(t *testing.T) { testSockRedirServerResets(t, l) })
	t.Run("client resets", func(t *testing.T) { testSockRedirClientResets(t, l) })
	t.Run("memory limit: on to TCP mid-stream, in order", func(t *testing.T) { testSockRedirMemLimit(t, l) })
	t.Run("forget an endpoint's sockets", func(t *testing.T) { testSockRedirForget(t, l) })
}

// testSockRedirLargeTransfer is TestSockRedir's subtest "large transfer both ways, only fabric's connections in the map".
func testSockRedirLargeTransfer(t *testing.T, l *redirLab) {
	// Unrelated connections, open meanwhile: host loopback, and a
	// sandbox client of a host service.
	lo := dialIn(t, l.host, fmt.Sprintf("127.0.0.1:%d", redirHostPort))
	defer lo.Close()
	up := dialIn(t, l.sbPath, fmt.Sprintf("%s:%d", sockHostVeth, redirHostPort2))
	defer up.Close()
	for _, c := range []*net.TCPConn{lo, up} {
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
	}
	before, err := l.redir.Stats()
	if err != nil {
		t.Fatal(err)
	}
	c := dialIn(t, l.host, fmt.Sprintf("127.0.0.1:%d", redirPubEcho))
	defer c.Close()
	l.waitConns(t, pair(c, l.echoTarget()))
	const size = 64 << 20
	if err := netnstest.CheckEcho(c, size, 1); err != nil {
		t.Fatal(err)
	}
	after, err := l.redir.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if moved := after.Bytes - before.Bytes; moved < 2*size {
		t.Errorf("%d bytes redirected, want at least %d (both directions)", moved, 2*size)
	}
	if after.Clients-before.Clients != 1 || after.Servers-before.Servers != 1 {
		t.Errorf("admitted %d clients and %d servers, want 1 and 1", after.Clients-before.Clients, after.Servers-before.Servers)
	}
	c.Close()
	l.waitConns(t, nil) // lo and up stay out; c left when closed
}

// testSockRedirOwnAddress is TestSockRedir's subtest "to the endpoint's own address".
func testSockRedirOwnAddress(t *testing.T, l *redirLab) {
	c := dialIn(t, l.host, l.echoTarget())
	defer c.Close()
	l.waitConns(t, pair(c, l.echoTarget()))
	if err := netnstest.CheckEcho(c, 1<<20, 2); err != nil {
		t.Fatal(err)
	}
}

// testSockRedirDualStack is TestSockRedir's subtest "dual-stack server".
func testSockRedirDualStack(t *testing.T, l *redirLab) {
	// Accepted on [::], the server's socket is AF_INET6 with
	// IPv4-mapped addresses; its key is the IPv4 one all the same.
	c := dialIn(t, l.host, fmt.Sprintf("127.0.0.1:%d", redirPubDual))
	defer c.Close()
	l.waitConns(t, pair(c, fmt.Sprintf("%s:%d", sockSandboxIP, redirDualPort)))
	before, _ := l.redir.Stats()
	if err := netnstest.CheckEcho(c, 4<<20, 4); err != nil {
		t.Fatal(err)
	}
	if after, _ := l.redir.Stats(); after.Bytes-before.Bytes < 2*(4<<20) {
		t.Errorf("%d bytes redirected, want at least %d", after.Bytes-before.Bytes, 2*(4<<20))
	}
}

// testSockRedirPeerNeverJoins is TestSockRedir's subtest "peer never joins: TCP as usual".
func testSockRedirPeerNeverJoins(t *testing.T, l *redirLab) {
	// newSockLab's echo server listened before this process entered
	// the cgroup: its accepted sockets are not seen by sockops, so
	// the client is admitted alone and every send stays on TCP.
	target := fmt.Sprintf("%s:%d", sockSandboxIP, sockTargetPort)
	before, _ := l.redir.Stats()
	c := dialIn(t, l.host, target)
	defer c.Close()
	l.waitConns(t, pair(c, target)[:1])
	if _, err := c.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(c); err != nil || string(b) != "sandbox:hi" {
		t.Fatalf("reply %q, %v; want sandbox:hi", b, err)
	}
	after, _ := l.redir.Stats()
	if after.Msgs != before.Msgs || after.Passed == before.Passed {
		t.Errorf("redirected %d and passed %d messages, want 0 and at least 1", after.Msgs-before.Msgs, after.Passed-before.Passed)
	}
	c.Close()
	l.waitConns(t, nil)
}

// testSockRedirManyConns is TestSockRedir's subtest "many concurrent connections".
func testSockRedirManyConns(t *testing.T, l *redirLab) {
	const n, size = 32, 2 << 20
	before, _ := l.redir.Stats()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		c := dialIn(t, l.host, fmt.Sprintf("127.0.0.1:%d", redirPubEcho))
		wg.Go(func() {
			defer c.Close()
			if err := netnstest.CheckEcho(c, size, uint64(10+i)); err != nil {
				errs <- fmt.Errorf("connection %d: %w", i, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	after, _ := l.redir.Stats()
	if moved := after.Bytes - before.Bytes; moved < n*size {
		t.Errorf("%d bytes redirected, want at least %d", moved, n*size)
	}
	l.waitConns(t, nil)
}

// dialReset connects to the reset server through its published port,
// waits until the pair is in the hash, and tells the server which side
// resets: "S" the server, "C" the client.
func (l *redirLab) dialReset(t *testing.T, side string) *net.TCPConn {
	t.Helper()
	c := dialIn(t, l.host, fmt.Sprintf("127.0.0.1:%d", redirPubReset))
	l.waitConns(t, pair(c, fmt.Sprintf("%s:%d", sockSandboxIP, redirResetPort)))
	if _, err := c.Write([]byte(side)); err != nil {
		c.Close()
		t.Fatal(err)
	}
	return c
}

// testSockRedirServerResets is TestSockRedir's subtest "server resets".
func testSockRedirServerResets(t *testing.T, l *redirLab) {
	c := l.dialReset(t, "S")
	defer c.Close()
	_, err := c.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("read after the server reset: %v, want ECONNRESET", err)
	}
}

// testSockRedirClientResets is TestSockRedir's subtest "client resets".
func testSockRedirClientResets(t *testing.T, l *redirLab) {
	c := l.dialReset(t, "C")
	defer c.Close()
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	c.SetLinger(0)
	c.Close()
	select {
	case err := <-l.resetCh:
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("server's read after the client reset: %v, want ECONNRESET", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the server's read did not return after the client reset")
	}
}

// testSockRedirMemLimit is TestSockRedir's subtest "memory limit: on to TCP mid-stream, in order".
func testSockRedirMemLimit(t *testing.T, l *redirLab) {
	c := dialIn(t, l.host, fmt.Sprintf("127.0.0.1:%d", redirPubGate))
	defer c.Close()
	l.waitConns(t, pair(c, fmt.Sprintf("%s:%d", sockSandboxIP, redirGatePort)))
	before, _ := l.redir.Stats()
	// The server reads nothing yet: part a waits, redirected, in its
	// socket when part b comes behind it over TCP. It must read a
	// first.
	a, b := make([]byte, 1<<20), make([]byte, 1<<20)
	for i := range a {
		a[i], b[i] = byte(i*7), byte(i*13+1)
	}
	limited := make(chan struct{})
	sent := make(chan error, 1)
	go func() {
		defer close(sent)
		if _, err := c.Write(a); err != nil {
			sent <- err
			return
		}
		err := l.redir.SetMemMax(0) // TCP may have none in use: 0 stops every socket
		close(limited)
		if err != nil {
			sent <- err
			return
		}
		if _, err := c.Write(b); err != nil { // over TCP: blocks until the server reads
			sent <- err
			return
		}
		sent <- c.CloseWrite()
	}()
	defer l.redir.SetMemMax(noMemLimit)
	select {
	case <-limited:
	case err := <-sent:
		t.Fatalf("before the limit: %v", err)
	}
	mid, _ := l.redir.Stats()
	if mid.Bytes-before.Bytes != uint64(len(a)) {
		t.Fatalf("%d bytes redirected before the limit, want %d", mid.Bytes-before.Bytes, len(a))
	}
	l.gate <- struct{}{}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(append(a, b...))
	if !bytes.Equal(got, want[:]) {
		t.Errorf("server's hash %x, want %x (the bytes came out of order)", got, want)
	}
	after, _ := l.redir.Stats()
	// Both ends left: the client with b, the server with its answer.
	if after.MemOff-before.MemOff != 2 || after.Bytes != mid.Bytes || after.Passed == mid.Passed {
		t.Errorf("after the limit: %d sockets left, %d bytes redirected, %d sends passed; want 2, 0, some",
			after.MemOff-before.MemOff, after.Bytes-mid.Bytes, after.Passed-mid.Passed)
	}
}

// testSockRedirForget is TestSockRedir's subtest "forget an endpoint's sockets".
func testSockRedirForget(t *testing.T, l *redirLab) {
	c := dialIn(t, l.host, fmt.Sprintf("127.0.0.1:%d", redirPubEcho))
	defer c.Close()
	l.waitConns(t, pair(c, l.echoTarget()))
	n, err := l.redir.Forget(func(rc RedirConn) bool {
		return rc.Local.Addr() == ip(sockSandboxIP) || rc.Remote.Addr() == ip(sockSandboxIP)
	})
	if err != nil || n != 2 {
		t.Fatalf("forget: %d sockets, %v; want 2", n, err)
	}
	l.waitConns(t, nil)
	// Out of the hash the connection is plain TCP again.
	if err := netnstest.CheckEcho(c, 1<<20, 3); err != nil {
		t.Fatalf("after forget: %v", err)
	}
}
