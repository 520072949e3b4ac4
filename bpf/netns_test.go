//go:build linux

package bpf

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	fabricns "github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/kfeat"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// The namespace test runs the endpoint program where it will live: at TCX
// ingress of host-side veths, no bridge, sandboxes in their own namespaces.
// Addresses exist only inside the namespaces the test makes.

type sandbox struct {
	name, path string
	ep         Endpoint
	netw       Network
}

type hostLab struct {
	t          *testing.T
	name, path string
	objs       *Objects
}

func newHostLab(t *testing.T) *hostLab {
	t.Helper()
	netnstest.RequireRoot(t)
	o := load(t) // closed after the namespaces are gone (cleanup is LIFO)
	name, path := netnstest.New(t, "fbh")
	for _, n := range []Network{netA, netB} {
		if err := o.PutNetwork(n); err != nil {
			t.Fatal(err)
		}
	}
	return &hostLab{t: t, name: name, path: path, objs: o}
}

// addSandbox makes a sandbox namespace with eth0 whose peer, named host,
// sits in the host namespace with the program attached at its ingress.
func (l *hostLab) addSandbox(host string, ep Endpoint, n Network) *sandbox {
	t := l.t
	t.Helper()
	name, path := netnstest.New(t, "fbs")
	// Sandboxes without IPv6 (see endpoint.c): no background chatter either.
	netnstest.Run(t, name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	netnstest.Run(t, l.name, "ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", name)
	netnstest.Run(t, name, "ip", "link", "set", "eth0", "address", ep.MAC.String(), "up")
	netnstest.Run(t, name, "ip", "addr", "add", fmt.Sprintf("%s/%d", ep.Addr, n.Subnet.Bits()), "dev", "eth0")
	netnstest.Run(t, name, "ip", "route", "add", "default", "via", n.Gateway.String())
	netnstest.Run(t, l.name, "ip", "link", "set", host, "up")

	h := netnstest.Handle(t, l.path)
	defer h.Close()
	hl, err := h.LinkByName(host)
	if err != nil {
		t.Fatalf("find %s: %v", host, err)
	}
	ep.HostIfindex = hl.Attrs().Index
	if err := l.objs.PutEndpoint(ep); err != nil {
		t.Fatal(err)
	}
	lk, err := attachTC(l.path, ep.HostIfindex, l.objs.FromEndpoint(), ebpf.AttachTCXIngress)
	if err != nil {
		t.Fatalf("attach to %s: %v", host, err)
	}
	closeAtEnd(t, "link on "+host, lk)
	return &sandbox{name: name, path: path, ep: ep, netw: n}
}

// ping reports whether all of a few pings from s to addr were answered;
// it is bounded by count and a deadline.
func (s *sandbox) ping(t *testing.T, addr string, extra ...string) bool {
	t.Helper()
	args := append([]string{"ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1"}, extra...)
	out, err := netnstest.Cmd(s.name, append(args, addr)...).CombinedOutput()
	t.Logf("%s: ping %s %s: %s", s.ep.Addr, strings.Join(extra, " "), addr, lastLine(out))
	return err == nil
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// moved is the change of one counter cell across f.
func (l *hostLab) moved(v Verdict, r Reason, f func()) Counter {
	l.t.Helper()
	k := CounterKey{DirFromEndpoint, v, r}
	before := readCounters(l.t, l.objs)[k]
	f()
	after := readCounters(l.t, l.objs)[k]
	return Counter{after.Packets - before.Packets, after.Bytes - before.Bytes}
}

// movedUntil is moved for frames the kernel delivers after f returns (veth
// delivery goes through a backlog): it waits, up to 5 s, until done holds
// for the counter's change, and returns the change then.
func (l *hostLab) movedUntil(v Verdict, r Reason, f func(), done func(Counter) bool) Counter {
	l.t.Helper()
	k := CounterKey{DirFromEndpoint, v, r}
	before := readCounters(l.t, l.objs)[k]
	f()
	var moved Counter
	netnstest.Poll(5*time.Second, func() bool {
		after := readCounters(l.t, l.objs)[k]
		moved = Counter{after.Packets - before.Packets, after.Bytes - before.Bytes}
		return done(moved)
	})
	return moved
}

// namespacesLab is TestNamespaces' host: s1 and s2 on netA, s3 on netB.
type namespacesLab struct {
	l          *hostLab
	s1, s2, s3 *sandbox
}

func TestNamespaces(t *testing.T) {
	l := newHostLab(t)
	s1 := l.addSandbox("fb-s1", a1, netA)
	s2 := l.addSandbox("fb-s2", a2, netA)
	s3 := l.addSandbox("fb-s3", b1, netB)
	x := &namespacesLab{l, s1, s2, s3}
	t.Run("same network", func(t *testing.T) { testSameNetwork(t, x) })
	t.Run("other network", func(t *testing.T) { testOtherNetwork(t, x) })
	t.Run("spoofed source address", func(t *testing.T) { testSpoofedSourceAddress(t, x) })
	t.Run("spoofed source MAC", func(t *testing.T) { testSpoofedSourceMAC(t, x) })
	t.Run("gateway through the host stack", func(t *testing.T) { testGatewayThroughHost(t, x) })
	t.Run("truncated IPv4 frames", func(t *testing.T) { testTruncatedFrames(t, x) })
	t.Run("non-linear headers", func(t *testing.T) { testNonLinearHeaders(t, x) })
	t.Run("VLAN-tagged frames", func(t *testing.T) { testVLANTaggedFrames(t, x) })
}

// testSameNetwork: sandboxes on one network ping each other through the
// program, which answers their ARP.
func testSameNetwork(t *testing.T, x *namespacesLab) {
	l, s1, s2 := x.l, x.s1, x.s2
	var ok bool
	fwd := l.moved(VerdictRedirect, ReasonForward, func() { ok = s1.ping(t, s2.ep.Addr.String()) })
	if !ok {
		t.Fatal("sandboxes on one network cannot ping each other")
	}
	if fwd.Packets < 6 { // 3 requests, 3 replies, all through the program
		t.Errorf("forward counter moved by %d packets, want at least 6", fwd.Packets)
	}
	arp := readCounters(t, l.objs)[CounterKey{DirFromEndpoint, VerdictRedirect, ReasonARPReply}]
	if arp.Packets < 2 {
		t.Errorf("ARP replies counted: %d, want one per sandbox at least", arp.Packets)
	}
}

// testOtherNetwork: sandboxes on two networks cannot reach each other, and
// the drops are counted.
func testOtherNetwork(t *testing.T, x *namespacesLab) {
	l, s1, s3 := x.l, x.s1, x.s3
	var ok1, ok3 bool
	cross := l.moved(VerdictDrop, ReasonCrossNetwork, func() {
		ok3 = s3.ping(t, s1.ep.Addr.String())
		ok1 = s1.ping(t, s3.ep.Addr.String())
	})
	if ok1 || ok3 {
		t.Errorf("cross-network ping answered: B->A %v, A->B %v", ok3, ok1)
	}
	if cross.Packets < 6 {
		t.Errorf("cross-network drops: %d, want at least 6", cross.Packets)
	}
}

// testSpoofedSourceAddress: a packet from an address that is not the
// endpoint's is dropped.
func testSpoofedSourceAddress(t *testing.T, x *namespacesLab) {
	l, s1, s2 := x.l, x.s1, x.s2
	netnstest.Run(t, s1.name, "ip", "addr", "add", "10.1.0.99/24", "dev", "eth0")
	defer netnstest.Run(t, s1.name, "ip", "addr", "del", "10.1.0.99/24", "dev", "eth0")
	var ok bool
	spoofed := l.moved(VerdictDrop, ReasonSpoofedIP, func() { ok = s1.ping(t, s2.ep.Addr.String(), "-I", "10.1.0.99") })
	if ok {
		t.Error("ping from a spoofed source address was answered")
	}
	if spoofed.Packets == 0 {
		t.Error("no spoofed-ip drop counted")
	}
	if !s1.ping(t, s2.ep.Addr.String()) {
		t.Error("control: ping from the real address failed")
	}
}

// testSpoofedSourceMAC: a frame from a MAC that is not the endpoint's is
// dropped.
func testSpoofedSourceMAC(t *testing.T, x *namespacesLab) {
	l, s1, s2 := x.l, x.s1, x.s2
	netnstest.Run(t, s1.name, "ip", "link", "set", "eth0", "address", "02:00:de:ad:be:ef")
	defer netnstest.Run(t, s1.name, "ip", "link", "set", "eth0", "address", s1.ep.MAC.String())
	var ok bool
	spoofed := l.moved(VerdictDrop, ReasonSpoofedMAC, func() { ok = s1.ping(t, s2.ep.Addr.String()) })
	if ok {
		t.Error("ping from a spoofed MAC was answered")
	}
	// Pings or, with the neighbour entry gone, ARP requests: either way
	// something must have been dropped for its MAC.
	if spoofed.Packets == 0 {
		t.Error("no spoofed-mac drop counted")
	}
}

// testGatewayThroughHost: the frame to the gateway carries the router MAC,
// not the host veth's, and must still be accepted (pkt_type fixed by the
// program). The host side is what an eBPF datapath must provide: the gateway
// address on a host device and a route per endpoint.
func testGatewayThroughHost(t *testing.T, x *namespacesLab) {
	l, s1 := x.l, x.s1
	netnstest.Run(t, l.name, "ip", "link", "set", "lo", "up")
	netnstest.Run(t, l.name, "ip", "addr", "add", netA.Gateway.String()+"/32", "dev", "lo")
	netnstest.Run(t, l.name, "ip", "route", "add", s1.ep.Addr.String()+"/32", "dev", "fb-s1")
	var ok bool
	toHost := l.moved(VerdictPass, ReasonToHost, func() { ok = s1.ping(t, netA.Gateway.String()) })
	if !ok {
		t.Error("sandbox cannot ping its gateway on the host")
	}
	if toHost.Packets < 3 {
		t.Errorf("to-host passes: %d, want at least 3", toHost.Packets)
	}
}

// testTruncatedFrames: BPF_PROG_TEST_RUN refuses IPv4 frames shorter than an
// IPv4 header, so those lengths are sent for real, from the sandbox through
// a packet socket: every one must be counted as malformed and dropped.
func testTruncatedFrames(t *testing.T, x *namespacesLab) {
	l, s1 := x.l, x.s1
	var sent Counter
	malformed := l.movedUntil(VerdictDrop, ReasonMalformed, func() {
		err := fabricns.Do(s1.path, func() error {
			var err error
			sent, err = sendTruncated(s1.ep, 14, 14+20)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}, func(c Counter) bool { return c.Packets >= sent.Packets })
	if malformed != sent {
		t.Errorf("malformed drops %+v, want exactly the frames sent %+v", malformed, sent)
	}
}

// testNonLinearHeaders: a packet socket builds frames of a page or more as
// non-linear skbs with only the Ethernet header in the linear part; veth
// passes them on as they are, so the program must pull the IPv4 header in to
// see it.
func testNonLinearHeaders(t *testing.T, x *namespacesLab) {
	l, s1, s2 := x.l, x.s1, x.s2
	// Both ends: veth refuses frames larger than the receiver's MTU.
	for _, ns := range []struct{ name, dev string }{{s1.name, "eth0"}, {l.name, "fb-s1"}} {
		netnstest.Run(t, ns.name, "ip", "link", "set", ns.dev, "mtu", "9000")
		defer netnstest.Run(t, ns.name, "ip", "link", "set", ns.dev, "mtu", "1500")
	}
	big := ipFrom(s1.ep, netA, ipv4Hdr{src: s1.ep.Addr, dst: s2.ep.Addr, proto: protoUDP}, udp(s1.ep.Addr, s2.ep.Addr, 9, 9, make([]byte, 5000)))
	fwd := l.movedUntil(VerdictRedirect, ReasonForward, func() {
		err := fabricns.Do(s1.path, func() error { return sendFrame(big) })
		if err != nil {
			t.Fatal(err)
		}
	}, func(c Counter) bool { return c.Packets >= 2 })
	// Nothing listens on port 9 in s2: its ICMP port unreachable (a
	// 576-byte IPv4 packet) comes back through the program and shows
	// that the big frame was delivered.
	if want := (Counter{2, uint64(len(big)) + 14 + 576}); fwd != want {
		t.Errorf("forwarded %+v, want the frame and its ICMP error %+v", fwd, want)
	}
}

// testVLANTaggedFrames: a VLAN device in the sandbox; veth carries the tag
// out of band, which only a real device can show (BPF_PROG_TEST_RUN cannot
// set it).
func testVLANTaggedFrames(t *testing.T, x *namespacesLab) {
	l, s1 := x.l, x.s1
	kfeat.Need(t, kfeat.VLAN)
	netnstest.Run(t, s1.name, "ip", "link", "add", "link", "eth0", "name", "eth0.100", "type", "vlan", "id", "100")
	defer netnstest.Run(t, s1.name, "ip", "link", "del", "eth0.100")
	netnstest.Run(t, s1.name, "ip", "addr", "add", "10.1.100.2/24", "dev", "eth0.100")
	netnstest.Run(t, s1.name, "ip", "link", "set", "eth0.100", "up")
	var ok bool
	vlan := l.moved(VerdictDrop, ReasonVLAN, func() { ok = s1.ping(t, "10.1.100.3") })
	if ok {
		t.Error("ping over a VLAN was answered")
	}
	if vlan.Packets == 0 {
		t.Error("no vlan drop counted")
	}
}

// sendFrame sends one raw frame out of eth0.
func sendFrame(frame []byte) error {
	ifi, err := net.InterfaceByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0: %w", err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(fd)
	sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Protocol: netnstest.Htons(etherTypeIPv4), Halen: 6}
	copy(sa.Addr[:], frame[0:6])
	if err := unix.Sendto(fd, frame, 0, sa); err != nil {
		return fmt.Errorf("send %d-byte frame: %w", len(frame), err)
	}
	return nil
}

// sendTruncated sends one frame with EtherType IPv4 for every length in
// [from, to), from ep's MAC, and returns what it sent.
func sendTruncated(ep Endpoint, from, to int) (Counter, error) {
	full := ipFrom(ep, netA, ipv4Hdr{src: ep.Addr, dst: a2.Addr, proto: protoUDP}, udp(ep.Addr, a2.Addr, 1, 2, nil))
	var sent Counter
	for n := from; n < to; n++ {
		if err := sendFrame(full[:n]); err != nil {
			return sent, err
		}
		sent.Packets++
		sent.Bytes += uint64(n)
	}
	return sent, nil
}
