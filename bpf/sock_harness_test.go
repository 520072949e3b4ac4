//go:build linux

package bpf

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	fabricns "github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// newTestCgroup makes an empty cgroup v2 child of the root, removed after
// the test, and returns its path and an open descriptor for CLONE_INTO_CGROUP.
func newTestCgroup(t *testing.T) (string, int) {
	t.Helper()
	root, err := CgroupV2Root()
	if errors.Is(err, ErrNoCgroup2) {
		t.Skip("skipping: socket hooks need a cgroup v2 hierarchy and none is mounted")
	}
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, netnstest.UniqueName("fabric-socktest-"))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		// The helpers have been waited for, but the kernel may take a
		// moment to drop exited tasks from the cgroup.
		var err error
		for range 100 {
			if err = os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("remove cgroup %s: %v", dir, err)
	})
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open cgroup: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return dir, fd
}

// echoServers answer every TCP connection and UDP datagram with tag:payload,
// so a client can tell which server it reached. They are stopped and waited
// for when the test ends.
func echoServers(t *testing.T, nsPath, tag string, tcpAddrs, udpAddrs []string) {
	t.Helper()
	var (
		lns   []net.Listener
		pcs   []net.PacketConn
		wg    sync.WaitGroup
		reply = func(b []byte) []byte { return append([]byte(tag+":"), b...) }
	)
	// Sockets belong to the namespace of the thread that makes them; the
	// goroutines serving them may run anywhere.
	err := fabricns.Do(nsPath, func() error {
		for _, a := range tcpAddrs {
			ln, err := net.Listen("tcp4", a)
			if err != nil {
				return err
			}
			lns = append(lns, ln)
		}
		for _, a := range udpAddrs {
			pc, err := net.ListenPacket("udp4", a)
			if err != nil {
				return err
			}
			pcs = append(pcs, pc)
		}
		return nil
	})
	t.Cleanup(func() {
		for _, ln := range lns {
			ln.Close()
		}
		for _, pc := range pcs {
			pc.Close()
		}
		wg.Wait()
	})
	if err != nil {
		t.Fatalf("echo servers in %s: %v", nsPath, err)
	}
	for _, ln := range lns {
		wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return // closed
				}
				wg.Go(func() {
					defer c.Close()
					c.SetDeadline(time.Now().Add(5 * time.Second))
					b := make([]byte, 512)
					n, err := c.Read(b)
					if err == nil {
						c.Write(reply(b[:n]))
					}
				})
			}
		})
	}
	for _, pc := range pcs {
		wg.Go(func() {
			b := make([]byte, 512)
			for {
				n, from, err := pc.ReadFrom(b)
				if err != nil {
					return // closed
				}
				pc.WriteTo(reply(b[:n]), from)
			}
		})
	}
}

// A sockProbe is one client exchange the helper process makes.
type sockProbe struct {
	Net  string // "tcp", "udp" (connected) or "udp-sendto" (unconnected)
	Addr string // where the client connects or sends
}

func (p sockProbe) String() string { return p.Net + " " + p.Addr }

// sockResult is what the client saw.
type sockResult struct {
	Reply string // the server's answer, "tag:payload"
	Peer  string // getpeername (tcp, udp) or the reply's source (udp-sendto)
	Err   string
}

type sockHelperRequest struct {
	NetNS  string // namespace path to enter
	Probes []sockProbe
	Out    string // where to write the []sockResult (and the cgroup)
}

type sockHelperReport struct {
	Cgroup  string // the helper's cgroup v2 path, from /proc/self/cgroup
	Results []sockResult
}

const sockHelperEnv = "FABRIC_SOCK_TEST_HELPER"

// runSockClient runs probes from a child process inside the cgroup cgFD and
// the namespace nsPath: only a process created in the cgroup has its
// sockets go through the hooks.
func runSockClient(t *testing.T, cgFD int, nsPath string, probes []sockProbe) sockHelperReport {
	t.Helper()
	out := filepath.Join(t.TempDir(), "report.json")
	req, err := json.Marshal(sockHelperRequest{NetNS: nsPath, Probes: probes, Out: out})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestSockHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), sockHelperEnv+"="+string(req))
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgFD}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helper process: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("helper report: %v", err)
	}
	var rep sockHelperReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("helper report: %v", err)
	}
	if len(rep.Results) != len(probes) {
		t.Fatalf("helper answered %d of %d probes", len(rep.Results), len(probes))
	}
	return rep
}

// TestSockHelperProcess is not a test: it is the client that runSockClient
// starts inside the test cgroup. It does nothing in a normal run.
func TestSockHelperProcess(t *testing.T) {
	env := os.Getenv(sockHelperEnv)
	if env == "" {
		return
	}
	var req sockHelperRequest
	if err := json.Unmarshal([]byte(env), &req); err != nil {
		t.Fatal(err)
	}
	// This process exists only to be in the namespace: the thread never
	// leaves it, and every socket below is made on this thread.
	runtime.LockOSThread()
	f, err := os.Open(req.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatalf("enter %s: %v", req.NetNS, err)
	}
	f.Close()

	var rep sockHelperReport
	if b, err := os.ReadFile("/proc/self/cgroup"); err == nil {
		sc := bufio.NewScanner(strings.NewReader(string(b)))
		for sc.Scan() {
			if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
				rep.Cgroup = p
			}
		}
	}
	for i, p := range req.Probes {
		var r sockResult
		reply, peer, err := probe(p, fmt.Sprintf("probe-%d", i))
		r.Reply, r.Peer = string(reply), peer
		if err != nil {
			r.Err = err.Error()
		}
		rep.Results = append(rep.Results, r)
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(req.Out, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// probe makes one exchange; every step is bounded by a deadline.
func probe(p sockProbe, payload string) (reply []byte, peer string, err error) {
	const timeout = 2 * time.Second
	deadline := time.Now().Add(timeout)
	switch p.Net {
	case "tcp", "udp":
		// Go asks getpeername for RemoteAddr right after connect.
		c, err := net.DialTimeout(p.Net+"4", p.Addr, timeout)
		if err != nil {
			return nil, "", err
		}
		defer c.Close()
		c.SetDeadline(deadline)
		if _, err := c.Write([]byte(payload)); err != nil {
			return nil, c.RemoteAddr().String(), err
		}
		if p.Net == "tcp" {
			reply, err = io.ReadAll(c) // the server closes after answering
		} else {
			b := make([]byte, 512)
			var n int
			n, err = c.Read(b)
			reply = b[:n]
		}
		return reply, c.RemoteAddr().String(), err
	case "udp-sendto":
		to, err := net.ResolveUDPAddr("udp4", p.Addr)
		if err != nil {
			return nil, "", err
		}
		c, err := net.ListenUDP("udp4", &net.UDPAddr{})
		if err != nil {
			return nil, "", err
		}
		defer c.Close()
		c.SetDeadline(deadline)
		if _, err := c.WriteToUDP([]byte(payload), to); err != nil {
			return nil, "", err
		}
		b := make([]byte, 512)
		n, from, err := c.ReadFromUDP(b)
		if err != nil {
			return nil, "", err
		}
		return b[:n], from.String(), nil
	}
	return nil, "", fmt.Errorf("unknown probe %q", p.Net)
}

// sockLab: a host namespace with the hooks' attention (its cookie in
// host_config), a sandbox behind a veth running the echo servers a
// published port leads to, and a third namespace the hooks must ignore.
type sockLab struct {
	objs        *Objects
	sock        *Sock
	cgroup      string
	cgFD        int
	host, other string // namespace paths
	sandbox     string // namespace path of the echo servers' sandbox
}

const (
	sockHostVeth   = "10.77.0.1" // the host's end of the veth: not in host_addrs
	sockSandboxIP  = "10.77.0.2"
	sockHostAddr   = "198.18.0.1" // a host address fabric knows (host_addrs)
	sockTargetPort = 8080
)

func newSockLab(t *testing.T) *sockLab {
	t.Helper()
	netnstest.RequireRoot(t)
	o := load(t)
	hostName, hostPath := netnstest.New(t, "fbkh")
	sbName, sbPath := netnstest.New(t, "fbks")
	_, otherPath := netnstest.New(t, "fbko")
	for _, ns := range []string{hostName, sbName} {
		netnstest.Run(t, ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	}
	netnstest.Run(t, hostName, "ip", "link", "add", "sb0", "type", "veth", "peer", "name", "eth0", "netns", sbName)
	netnstest.Run(t, hostName, "ip", "addr", "add", sockHostVeth+"/24", "dev", "sb0")
	netnstest.Run(t, hostName, "ip", "addr", "add", sockHostAddr+"/32", "dev", "lo")
	netnstest.Run(t, hostName, "ip", "link", "set", "sb0", "up")
	netnstest.Run(t, sbName, "ip", "addr", "add", sockSandboxIP+"/24", "dev", "eth0")
	netnstest.Run(t, sbName, "ip", "link", "set", "eth0", "up")

	target := fmt.Sprintf("%s:%d", sockSandboxIP, sockTargetPort)
	echoServers(t, sbPath, "sandbox", []string{target}, []string{target})
	// What a client reaches when the hooks leave it alone.
	echoServers(t, hostPath, "host", []string{":18080", ":18081", ":18082"}, []string{":18080", ":18081"})
	echoServers(t, otherPath, "other", []string{"127.0.0.1:18080"}, []string{"127.0.0.1:18080"})

	f, err := os.Open(hostPath)
	if err != nil {
		t.Fatal(err)
	}
	cookie, err := NetNSCookie(int(f.Fd()))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := o.SetHostConfig(HostConfig{NetNSCookie: cookie, NATPortMin: 32768, NATPortMax: 60999}); err != nil {
		t.Fatal(err)
	}
	if err := o.SetHostAddrs([]netip.Addr{ip(sockHostAddr)}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []Port{
		{Proto: ProtoTCP, HostPort: 18080, Target: ip(sockSandboxIP), TargetPort: sockTargetPort},
		{Proto: ProtoUDP, HostPort: 18080, Target: ip(sockSandboxIP), TargetPort: sockTargetPort},
		{Proto: ProtoTCP, HostAddr: ip("127.0.0.1"), HostPort: 18082, Target: ip(sockSandboxIP), TargetPort: sockTargetPort},
	} {
		if err := o.PutPort(p); err != nil {
			t.Fatal(err)
		}
	}

	s := mustLoadOn(t, o, "socket hooks", LoadSock)
	cg, cgFD := newTestCgroup(t)
	links, err := s.AttachCgroup(cg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for i := len(links) - 1; i >= 0; i-- {
			if err := links[i].Close(); err != nil {
				t.Errorf("detach: %v", err)
			}
		}
	})
	return &sockLab{objs: o, sock: s, cgroup: cg, cgFD: cgFD, host: hostPath, other: otherPath, sandbox: sbPath}
}

// socketCounters is the DIR_SOCKET part of the counters.
func (l *sockLab) socketCounters(t *testing.T) map[CounterKey]Counter {
	t.Helper()
	out := make(map[CounterKey]Counter)
	for k, c := range readCounters(t, l.objs) {
		if k.Direction == DirSocket {
			out[k] = c
		}
	}
	return out
}

// sockWant is what a probe should see: the server's tag and the peer.
type sockWant struct {
	probe sockProbe
	tag   string // "sandbox", "host" or "other"
	peer  string // "" for: do not check
}

// check runs the probes from nsPath inside the cgroup and compares, and
// returns how the socket counters moved meanwhile.
func (l *sockLab) check(t *testing.T, nsPath string, wants []sockWant) map[CounterKey]Counter {
	t.Helper()
	probes := make([]sockProbe, len(wants))
	for i, w := range wants {
		probes[i] = w.probe
	}
	before := l.socketCounters(t)
	rep := runSockClient(t, l.cgFD, nsPath, probes)
	delta := counterDelta(before, l.socketCounters(t))
	if want := "/" + filepath.Base(l.cgroup); rep.Cgroup != want {
		t.Fatalf("helper ran in cgroup %q, want %q", rep.Cgroup, want)
	}
	for i, w := range wants {
		r := rep.Results[i]
		wantReply := fmt.Sprintf("%s:probe-%d", w.tag, i)
		if r.Err != "" || r.Reply != wantReply {
			t.Errorf("%s: reply %q, error %q; want %q", w.probe, r.Reply, r.Err, wantReply)
			continue
		}
		if w.peer != "" && r.Peer != w.peer {
			t.Errorf("%s: peer %s, want %s", w.probe, r.Peer, w.peer)
		}
	}
	return delta
}

// wantsFrom expects each probe to be answered by the server tagged tag,
// seen as a peer at the address the probe was sent to.
func wantsFrom(tag string, probes ...sockProbe) []sockWant {
	wants := make([]sockWant, len(probes))
	for i, p := range probes {
		wants[i] = sockWant{probe: p, tag: tag, peer: p.Addr}
	}
	return wants
}

// checkUntouched is check for probes the hooks must leave alone: no
// socket counter may move.
func (l *sockLab) checkUntouched(t *testing.T, nsPath string, wants []sockWant) {
	t.Helper()
	if delta := l.check(t, nsPath, wants); len(delta) != 0 {
		t.Errorf("socket counters moved: %v", delta)
	}
}
