//go:build linux

package bpf

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	fabricns "github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// The NAT namespace test: sandboxes behind a "host" namespace whose uplink
// veth (up0) leads to an "outside" namespace, the uplink programs at its
// TCX ingress and egress. The outside has no route to the fabric's
// subnets: what it answers, it answers to the host's address.

const (
	labUplinkAddr  = "192.0.2.1"
	labOutsideAddr = "192.0.2.254"
)

// setTxChecksum turns a device's transmit checksum offload on or off
// (ETHTOOL_STXCSUM through the SIOCETHTOOL ioctl; no ethtool binary
// needed). A veth that offloads hands on CHECKSUM_PARTIAL packets, whose
// checksum nobody verifies; one that does not completes a partial
// checksum in software before sending, so that its peer checks it.
func setTxChecksum(dev string, on bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	const ethtoolSTxCsum = 0x17
	// struct ethtool_value, and struct ifreq with ifr_data pointing to it.
	// Both on the heap, which does not move, and kept alive over the call.
	val := &struct{ cmd, data uint32 }{cmd: ethtoolSTxCsum}
	if on {
		val.data = 1
	}
	ifr := &struct {
		name [unix.IFNAMSIZ]byte
		data uintptr
		_    [16]byte
	}{data: uintptr(unsafe.Pointer(val))}
	copy(ifr.name[:unix.IFNAMSIZ-1], dev)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(ifr)))
	runtime.KeepAlive(val)
	if errno != 0 {
		return fmt.Errorf("%s: set tx checksum offload %v: %w", dev, on, errno)
	}
	return nil
}

type natNSLab struct {
	*hostLab
	u                *Uplink
	outName, outPath string
	uplinkIfindex    int
	s1, s2           *sandbox
}

func newNATNSLab(t *testing.T) *natNSLab {
	t.Helper()
	l := &natNSLab{hostLab: newHostLab(t)}
	l.s1 = l.addSandbox("fb-n1", a1, netA)
	l.s2 = l.addSandbox("fb-n2", a2, netA)
	l.outName, l.outPath = netnstest.New(t, "fbo")

	netnstest.Run(t, l.name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	netnstest.Run(t, l.name, "ip", "link", "set", "lo", "up")
	netnstest.Run(t, l.name, "ip", "addr", "add", netA.Gateway.String()+"/32", "dev", "lo")
	for _, s := range []*sandbox{l.s1, l.s2} {
		netnstest.Run(t, l.name, "ip", "route", "add", s.ep.Addr.String()+"/32", "dev", hostDev(s))
	}
	netnstest.Run(t, l.name, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", l.outName)
	netnstest.Run(t, l.name, "ip", "addr", "add", labUplinkAddr+"/24", "dev", "up0")
	netnstest.Run(t, l.name, "ip", "link", "set", "up0", "up")
	netnstest.Run(t, l.outName, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
	netnstest.Run(t, l.outName, "ip", "link", "set", "lo", "up")
	netnstest.Run(t, l.outName, "ip", "addr", "add", labOutsideAddr+"/24", "dev", "eth0")
	netnstest.Run(t, l.outName, "ip", "link", "set", "eth0", "up")

	h := netnstest.Handle(t, l.path)
	defer h.Close()
	up, err := h.LinkByName("up0")
	if err != nil {
		t.Fatal(err)
	}
	l.uplinkIfindex = up.Attrs().Index

	u := mustLoadOn(t, l.objs, "uplink", LoadUplink)
	l.u = u
	for _, a := range []struct {
		prog   *ebpf.Program
		attach ebpf.AttachType
	}{{u.FromUplink(), ebpf.AttachTCXIngress}, {u.ToUplink(), ebpf.AttachTCXEgress}} {
		lk, err := attachTC(l.path, l.uplinkIfindex, a.prog, a.attach)
		if err != nil {
			t.Fatalf("attach to up0: %v", err)
		}
		t.Cleanup(func() { lk.Close() })
	}

	o := l.objs
	if err := o.SetHostConfig(HostConfig{SNATAddr: ip(labUplinkAddr), UplinkIfindex: l.uplinkIfindex, NATPortMin: 40000, NATPortMax: 40999}); err != nil {
		t.Fatal(err)
	}
	if err := o.SetHostAddrs([]netip.Addr{ip(labUplinkAddr), netA.Gateway}); err != nil {
		t.Fatal(err)
	}
	if err := o.PutPort(Port{Proto: ProtoTCP, HostPort: 8080, Target: a1.Addr, TargetPort: 80}); err != nil {
		t.Fatal(err)
	}
	if err := o.PutPort(Port{Proto: ProtoUDP, HostPort: 5353, Target: a1.Addr, TargetPort: 53}); err != nil {
		t.Fatal(err)
	}
	return l
}

func hostDev(s *sandbox) string {
	if s.ep.Addr == a1.Addr {
		return "fb-n1"
	}
	return "fb-n2"
}

// movedBy is the change of the counter cells across f.
func (l *natNSLab) movedBy(t *testing.T, f func(), keys ...CounterKey) map[CounterKey]uint64 {
	t.Helper()
	before := readCounters(t, l.objs)
	f()
	after := readCounters(t, l.objs)
	out := make(map[CounterKey]uint64)
	for _, k := range keys {
		out[k] = after[k].Packets - before[k].Packets
	}
	return out
}

// serveEcho listens in the namespace at path and answers every TCP line
// and UDP datagram with the peer's address as it saw it.
func serveEcho(t *testing.T, path, addr string) {
	t.Helper()
	netnstest.Serve(t, path, "tcp4", addr, 5*time.Second, func(c net.Conn) {
		if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
			fmt.Fprintf(c, "%s\n", c.RemoteAddr())
		}
	})
	netnstest.ServePackets(t, path, "udp4", addr, func(pc net.PacketConn, payload []byte, from net.Addr) {
		_, _ = pc.WriteTo(append([]byte(from.String()+" "), payload...), from)
	})
}

// askTCP connects from the namespace at path to addr and returns the
// address the server saw the connection come from.
func askTCP(path, addr string) (string, error) {
	var seen string
	err := fabricns.Do(path, func() error {
		c, err := net.DialTimeout("tcp4", addr, 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := fmt.Fprintf(c, "who am i\n"); err != nil {
			return err
		}
		seen, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	return strings.TrimSpace(seen), err
}

// askUDP sends a datagram of size bytes from the namespace at path to addr
// and returns the address the server saw it come from. Retried a few
// times: the first may be lost to neighbour resolution.
func askUDP(path, addr string, size int) (string, error) {
	var seen string
	err := fabricns.Do(path, func() error {
		c, err := net.Dial("udp4", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		msg := make([]byte, size)
		buf := make([]byte, size+64)
		for range 5 {
			if _, err := c.Write(msg); err != nil {
				return err
			}
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			n, err := c.Read(buf)
			if err == nil {
				seen, _, _ = strings.Cut(string(buf[:n]), " ")
				if n-len(seen)-1 != size {
					return fmt.Errorf("echo of %d bytes came back with %d", size, n-len(seen)-1)
				}
				return nil
			}
		}
		return fmt.Errorf("no answer from %s", addr)
	})
	return seen, err
}

// checkFrom checks that seen ("ip:port") is from wantIP, and if portRange
// is set, from a port in 40000-40999.
func checkFrom(t *testing.T, what, seen, wantIP string, portRange bool) {
	t.Helper()
	ap, err := netip.ParseAddrPort(seen)
	if err != nil {
		t.Errorf("%s: server saw %q: %v", what, seen, err)
		return
	}
	if ap.Addr().String() != wantIP {
		t.Errorf("%s: server saw the connection from %s, want %s", what, ap.Addr(), wantIP)
	}
	if portRange && (ap.Port() < 40000 || ap.Port() > 40999) {
		t.Errorf("%s: server saw port %d, outside the masquerade range", what, ap.Port())
	}
}

func TestNATNamespaces(t *testing.T) {
	l := newNATNSLab(t)
	serveEcho(t, l.outPath, labOutsideAddr+":8000")
	serveEcho(t, l.s1.path, "0.0.0.0:80")
	serveEcho(t, l.s1.path, "0.0.0.0:53")

	// Sandboxes and the outside send CHECKSUM_PARTIAL packets (their
	// veths offload); the host side completes checksums in software when
	// it sends, so every receiver checks what the programs left.
	for _, dev := range []string{"fb-n1", "fb-n2", "up0"} {
		if err := fabricns.Do(l.path, func() error { return setTxChecksum(dev, false) }); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("tc", func(t *testing.T) { natTraffic(t, l) })

	l.attachXDP(t)
	xdpSNATReply := CounterKey{DirXDPUplink, VerdictPass, ReasonSNATReply}
	xdpDNAT := CounterKey{DirXDPUplink, VerdictPass, ReasonDNAT}
	moved := l.movedBy(t, func() { t.Run("xdp", func(t *testing.T) { natTraffic(t, l) }) }, xdpSNATReply, xdpDNAT)
	if moved[xdpSNATReply] < 3 || moved[xdpDNAT] < 3 {
		t.Errorf("XDP counters moved %v: it did not translate", moved)
	}
}

// The counters natTraffic expects to move, in tc.
var (
	natSNAT         = CounterKey{DirToUplink, VerdictPass, ReasonSNAT}
	natSNATReply    = CounterKey{DirFromUplink, VerdictRedirect, ReasonSNATReply}
	natDNAT         = CounterKey{DirFromUplink, VerdictRedirect, ReasonDNAT}
	natDNATReply    = CounterKey{DirToUplink, VerdictPass, ReasonDNATReply}
	natHairpin      = CounterKey{DirFromEndpoint, VerdictRedirect, ReasonHairpin}
	natHairpinReply = CounterKey{DirFromEndpoint, VerdictRedirect, ReasonDNATReply}
)

// natTraffic: masqueraded traffic out (ICMP, TCP, UDP), published ports
// from the outside and from sandboxes (hairpin, and a sandbox to its own
// port), each seen with the right source by the other side.
func natTraffic(t *testing.T, l *natNSLab) {
	t.Run("ping out", func(t *testing.T) {
		var ok bool
		moved := l.movedBy(t, func() { ok = l.s1.ping(t, labOutsideAddr) }, natSNAT, natSNATReply)
		if !ok {
			t.Fatal("sandbox cannot ping the outside")
		}
		if moved[natSNAT] < 3 || moved[natSNATReply] < 3 {
			t.Errorf("ping: counters moved %v, want 3 each at least", moved)
		}
	})
	t.Run("tcp and udp out", func(t *testing.T) {
		seen, err := askTCP(l.s1.path, labOutsideAddr+":8000")
		if err != nil {
			t.Fatalf("tcp from the sandbox: %v", err)
		}
		checkFrom(t, "tcp", seen, labUplinkAddr, true)
		for _, size := range []int{10, 1400} {
			seen, err = askUDP(l.s2.path, labOutsideAddr+":8000", size)
			if err != nil {
				t.Fatalf("udp from the sandbox: %v", err)
			}
			checkFrom(t, "udp", seen, labUplinkAddr, true)
		}
	})
	t.Run("published port from outside", func(t *testing.T) {
		var seen string
		var err error
		moved := l.movedBy(t, func() { seen, err = askTCP(l.outPath, labUplinkAddr+":8080") }, natDNAT, natDNATReply)
		if err != nil {
			t.Fatalf("tcp to the published port: %v", err)
		}
		checkFrom(t, "published tcp", seen, labOutsideAddr, false)
		if moved[natDNAT] < 3 || moved[natDNATReply] < 3 {
			t.Errorf("counters moved %v", moved)
		}
		if seen, err = askUDP(l.outPath, labUplinkAddr+":5353", 100); err != nil {
			t.Fatalf("udp to the published port: %v", err)
		}
		checkFrom(t, "published udp", seen, labOutsideAddr, false)
	})
	t.Run("published port from a sandbox", func(t *testing.T) {
		var seen string
		var err error
		moved := l.movedBy(t, func() { seen, err = askTCP(l.s2.path, labUplinkAddr+":8080") }, natHairpin, natHairpinReply)
		if err != nil {
			t.Fatalf("hairpin: %v", err)
		}
		checkFrom(t, "hairpin", seen, a2.Addr.String(), false)
		if moved[natHairpin] < 3 || moved[natHairpinReply] < 3 {
			t.Errorf("counters moved %v", moved)
		}
		if seen, err = askTCP(l.s1.path, labUplinkAddr+":8080"); err != nil {
			t.Fatalf("self hairpin: %v", err)
		}
		checkFrom(t, "self hairpin", seen, netA.Gateway.String(), false)
	})
}

// attachXDP attaches the uplink's XDP program to up0, with full checksums
// from the outside, and flushes the connections tc made.
func (l *natNSLab) attachXDP(t *testing.T) {
	// Full checksums from the outside as on a wire: a veth peer's
	// CHECKSUM_PARTIAL frames would reach XDP with only the pseudo header
	// summed, which XDP cannot know (never XDP on a veth uplink in
	// production).
	if err := fabricns.Do(l.outPath, func() error { return setTxChecksum("eth0", false) }); err != nil {
		t.Fatal(err)
	}
	var xl link.Link
	err := fabricns.Do(l.path, func() error {
		var err error
		xl, err = link.AttachXDP(link.XDPOptions{Program: l.u.XDP(), Interface: l.uplinkIfindex})
		return err
	})
	if err != nil {
		t.Fatalf("attach XDP to up0: %v", err)
	}
	t.Cleanup(func() { xl.Close() })
	if err := l.objs.FlushConntrack(); err != nil {
		t.Fatal(err)
	}
}
