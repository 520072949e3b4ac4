//go:build linux

package bpf

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"golang.org/x/sys/unix"
)

// monotonic is bpf_ktime_get_ns()'s clock.
func monotonic(tb testing.TB) uint64 {
	tb.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		tb.Fatal(err)
	}
	return uint64(ts.Nano())
}

// maxClockWait bounds how long age waits for a young clock.
const maxClockWait = 3 * time.Minute

// age sets an entry's last_seen to d before now.
func (l *natLab) age(tb testing.TB, k endpointCtKey, d time.Duration) {
	tb.Helper()
	e, ok := l.ct(tb, k)
	if !ok {
		tb.Fatalf("no conntrack entry %+v to age", k)
	}
	now := monotonic(tb)
	if now <= uint64(d) {
		// A machine (or test VM) that booted less than d ago: wait for
		// its clock, up to maxClockWait, rather than never run.
		wait := time.Duration(uint64(d)-now) + 10*time.Millisecond
		if wait > maxClockWait {
			tb.Skipf("skipping: the clock is %v old, the test needs it older than %v", time.Duration(now), d)
		}
		tb.Logf("waiting %v for the monotonic clock to pass %v (the machine booted recently)", wait.Round(time.Second), d)
		time.Sleep(wait)
		now = monotonic(tb)
	}
	e.LastSeen = now - uint64(d)
	if err := l.o.objs.Ct.Put(k, e); err != nil {
		tb.Fatal(err)
	}
}

// TestConntrackExpiry: an entry past its timeout is gone for every program
// (the reply is no longer translated) and its tuple can be taken again.
func TestConntrackExpiry(t *testing.T) {
	l := loadNAT(t)
	f := flow{proto: protoUDP, src: a1.Addr, sport: 40070, dst: outside, dport: 53, payload: []byte("q")}
	masq := f.with(hostAddr, 40070, outside, 53)
	orig := ctKey(protoUDP, a1.Addr, 40070, outside, 53, endpointCtDirCT_DIR_OUT)
	reply := ctKey(protoUDP, outside, 53, hostAddr, 40070, endpointCtDirCT_DIR_IN)
	l.expect(t, hookToUplink, uplinkIfindex, toOutside(f), tcActOK, ReasonSNAT)

	// Unanswered UDP lives 60 s.
	l.age(t, orig, 59*time.Second)
	l.age(t, reply, 59*time.Second)
	l.expect(t, hookFromUplink, uplinkIfindex, fromOutside(masq.reply()), tcActRedirect, ReasonSNATReply)
	// That reply refreshed both entries, and answered UDP lives 120 s.
	for _, k := range []endpointCtKey{orig, reply} {
		if e, _ := l.ct(t, k); monotonic(t)-e.LastSeen > uint64(time.Second) || e.Flags&ctFlagReplied == 0 {
			t.Errorf("entry %+v not refreshed by the reply: %+v", k, e)
		}
	}
	l.age(t, orig, 121*time.Second)
	l.age(t, reply, 121*time.Second)
	l.expectBothIngress(t, fromOutside(masq.reply()), false, ReasonNotNAT)

	// The endpoint's next packet starts over, on the same port: the
	// expired reply tuple is free again.
	l.expectOut(t, hookToUplink, uplinkIfindex, toOutside(f), tcActOK, ReasonSNAT, toOutside(masq))
	if e, _ := l.ct(t, reply); monotonic(t)-e.LastSeen > uint64(time.Second) || e.Flags != 0 {
		t.Errorf("reply entry not renewed: %+v", e)
	}
	l.expect(t, hookFromUplink, uplinkIfindex, fromOutside(masq.reply()), tcActRedirect, ReasonSNATReply)
}

// TestConntrackTCPState: TCP timeouts follow the connection: short before
// the answer, long once established, short again after a reset.
func TestConntrackTCPState(t *testing.T) {
	l := loadNAT(t)
	syn := flow{proto: protoTCP, src: a1.Addr, sport: 40080, dst: outside, dport: 443, tcpFlags: tcpFlagSYN}
	masq := syn.with(hostAddr, 40080, outside, 443)
	orig := ctKey(protoTCP, a1.Addr, 40080, outside, 443, endpointCtDirCT_DIR_OUT)
	reply := ctKey(protoTCP, outside, 443, hostAddr, 40080, endpointCtDirCT_DIR_IN)
	synAck := masq.reply()
	synAck.tcpFlags = tcpFlagSYN | tcpFlagACK
	rst := masq.reply()
	rst.tcpFlags = tcpFlagRST

	ageBoth := func(d time.Duration) {
		l.age(t, orig, d)
		l.age(t, reply, d)
	}
	l.expect(t, hookToUplink, uplinkIfindex, toOutside(syn), tcActOK, ReasonSNAT)
	ageBoth(6 * time.Second) // unanswered SYN: 5 s
	l.expect(t, hookFromUplink, uplinkIfindex, fromOutside(synAck), tcActOK, ReasonNotNAT)

	l.expect(t, hookToUplink, uplinkIfindex, toOutside(syn), tcActOK, ReasonSNAT)
	l.expect(t, hookFromUplink, uplinkIfindex, fromOutside(synAck), tcActRedirect, ReasonSNATReply)
	ack := syn
	ack.tcpFlags = tcpFlagACK
	l.expect(t, hookToUplink, uplinkIfindex, toOutside(ack), tcActOK, ReasonSNAT) // handshake done
	// Established: longer than every other TCP timeout (FIN's 120 s is the
	// longest); 6 h in full, which no test can wait for on a fresh machine.
	ageBoth(121 * time.Second)
	l.expect(t, hookFromUplink, uplinkIfindex, fromOutside(synAck), tcActRedirect, ReasonSNATReply)
	l.expect(t, hookFromUplink, uplinkIfindex, fromOutside(rst), tcActRedirect, ReasonSNATReply)
	for _, k := range []endpointCtKey{orig, reply} {
		if e, _ := l.ct(t, k); e.Flags&ctFlagRST == 0 {
			t.Errorf("entry %+v: flags %#x, want RST", k, e.Flags)
		}
	}
	ageBoth(11 * time.Second) // reset: 10 s
	l.expect(t, hookFromUplink, uplinkIfindex, fromOutside(synAck), tcActOK, ReasonNotNAT)

	// A new SYN on the tuple starts a new connection with fresh state.
	l.expect(t, hookToUplink, uplinkIfindex, toOutside(syn), tcActOK, ReasonSNAT)
	if e, _ := l.ct(t, orig); e.Flags != ctFlagSynSent {
		t.Errorf("new connection starts with flags %#x, want SYN sent only", e.Flags)
	}
}

// TestConntrackHandshake: an unanswered SYN lives 5 s, an answered one
// 60 s until the original side acknowledges, then the connection is
// established.
func TestConntrackHandshake(t *testing.T) {
	l := loadNAT(t)
	conn := func(sport uint16) (syn, synAck, ack flow, orig, reply endpointCtKey) {
		syn = flow{proto: protoTCP, src: a1.Addr, sport: sport, dst: outside, dport: 443, tcpFlags: tcpFlagSYN}
		synAck = syn.with(hostAddr, sport, outside, 443).reply()
		synAck.tcpFlags = tcpFlagSYN | tcpFlagACK
		ack = syn
		ack.tcpFlags = tcpFlagACK
		orig = ctKey(protoTCP, a1.Addr, sport, outside, 443, endpointCtDirCT_DIR_OUT)
		reply = ctKey(protoTCP, outside, 443, hostAddr, sport, endpointCtDirCT_DIR_IN)
		return
	}
	ageBoth := func(d time.Duration, keys ...endpointCtKey) {
		for _, k := range keys {
			l.age(t, k, d)
		}
	}

	syn, synAck, _, orig, reply := conn(40100)
	l.expect(t, hookToUplink, uplinkIfindex, toOutside(syn), tcActOK, ReasonSNAT)
	ageBoth(4*time.Second, orig, reply)
	l.expect(t, hookFromUplink, uplinkIfindex, fromOutside(synAck), tcActRedirect, ReasonSNATReply)
	if e, _ := l.ct(t, orig); e.Flags != ctFlagReplied|ctFlagSynSent {
		t.Errorf("answered SYN: flags %#x, want replied and SYN sent", e.Flags)
	}
	ageBoth(30*time.Second, orig, reply) // answered, not acknowledged: 60 s
	l.expect(t, hookFromUplink, uplinkIfindex, fromOutside(synAck), tcActRedirect, ReasonSNATReply)

	syn, synAck, _, orig, reply = conn(40101)
	l.expect(t, hookToUplink, uplinkIfindex, toOutside(syn), tcActOK, ReasonSNAT)
	ageBoth(6*time.Second, orig, reply)
	l.expect(t, hookFromUplink, uplinkIfindex, fromOutside(synAck), tcActOK, ReasonNotNAT)

	syn, synAck, ack, orig, reply := conn(40102)
	l.expect(t, hookToUplink, uplinkIfindex, toOutside(syn), tcActOK, ReasonSNAT)
	l.expect(t, hookFromUplink, uplinkIfindex, fromOutside(synAck), tcActRedirect, ReasonSNATReply)
	l.expect(t, hookToUplink, uplinkIfindex, toOutside(ack), tcActOK, ReasonSNAT)
	for _, k := range []endpointCtKey{orig, reply} {
		if e, _ := l.ct(t, k); e.Flags != ctFlagReplied {
			t.Errorf("handshake done: entry %+v flags %#x, want replied only (established)", k, e.Flags)
		}
	}
	ageBoth(90*time.Second, orig, reply)
	l.expect(t, hookFromUplink, uplinkIfindex, fromOutside(synAck), tcActRedirect, ReasonSNATReply)
}

// fillReply takes the masquerade reply tuple outside:53 -> host:port for
// another (made up) connection, last seen d ago.
func (l *natLab) fillReply(tb testing.TB, port uint16, d time.Duration) endpointCtKey {
	tb.Helper()
	k := ctKey(protoUDP, outside, 53, hostAddr, port, endpointCtDirCT_DIR_IN)
	v := endpointCtEntry{
		LastSeen: monotonic(tb), Saddr: be32(outside), Daddr: be32(a2.Addr), Sport: be16(53), Dport: be16(port),
		Kind: uint8(endpointCtKindCT_KIND_SNAT), Reply: 1, RevDir: uint8(endpointCtDirCT_DIR_OUT),
	}
	if err := l.o.objs.Ct.Put(k, v); err != nil {
		tb.Fatal(err)
	}
	if d > 0 {
		l.age(tb, k, d)
	}
	return k
}

// TestPortCollision: when the first choice of port is taken by a live
// connection, masquerade picks another one in the range and leaves the
// other connection alone; an expired one is taken over.
func TestPortCollision(t *testing.T) {
	l := loadNAT(t)
	taken := l.fillReply(t, 40090, 0)
	before, _ := l.ct(t, taken)
	f := flow{proto: protoUDP, src: a1.Addr, sport: 40090, dst: outside, dport: 53, payload: []byte("q")}
	out := l.expect(t, hookToUplink, uplinkIfindex, toOutside(f), tcActOK, ReasonSNAT)
	port := outPort(out)
	if port == 40090 || port < natPortMin || port > natPortMax {
		t.Errorf("masqueraded to port %d: want another one in %d-%d", port, natPortMin, natPortMax)
	}
	if after, _ := l.ct(t, taken); after != before {
		t.Errorf("the other connection's entry changed: %+v -> %+v", before, after)
	}
	masq := f.with(hostAddr, port, outside, 53)
	l.expectOut(t, hookFromUplink, uplinkIfindex, fromOutside(masq.reply()), tcActRedirect, ReasonSNATReply, toSandbox(a1, f.reply()))

	l.fillReply(t, 40091, 10*time.Minute)
	g := flow{proto: protoUDP, src: a1.Addr, sport: 40091, dst: outside, dport: 53, payload: []byte("q")}
	l.expectOut(t, hookToUplink, uplinkIfindex, toOutside(g), tcActOK, ReasonSNAT, toOutside(g.with(hostAddr, 40091, outside, 53)))
}

// TestNATExhausted: with every port of the range taken, new connections
// are dropped and counted, and nothing is stored for them.
func TestNATExhausted(t *testing.T) {
	l := loadNAT(t)
	l.setPorts(t, 40100, 40103)
	for p := uint16(40100); p <= 40103; p++ {
		l.fillReply(t, p, 0)
	}
	entries, _, err := l.o.ConntrackStats()
	if err != nil {
		t.Fatal(err)
	}
	for _, sport := range []uint16{40100, 5000} {
		f := flow{proto: protoUDP, src: a1.Addr, sport: sport, dst: outside, dport: 53, payload: []byte("q")}
		l.expectOut(t, hookToUplink, uplinkIfindex, toOutside(f), tcActShot, ReasonNATExhausted, nil)
	}
	if after, _, _ := l.o.ConntrackStats(); after != entries {
		t.Errorf("conntrack went from %d to %d entries for dropped connections", entries, after)
	}
	// Other protocols have their own tuples.
	ping := flow{proto: protoICMP, src: a1.Addr, sport: 40100, dst: outside}
	l.expect(t, hookToUplink, uplinkIfindex, toOutside(ping), tcActOK, ReasonSNAT)
}

// TestNATAvoidsHostSockets: a port a host socket holds is never used for
// masquerade, or the NAT would take that socket's packets. The program
// looks sockets up in the namespace it runs in: a fresh one, so that the
// test's sockets meet nothing else.
func TestNATAvoidsHostSockets(t *testing.T) {
	netnstest.RequireRoot(t)
	_, path := netnstest.New(t, "fbc")
	l := loadNAT(t)
	for _, network := range []string{"udp4", "tcp4"} {
		var (
			port          uint16
			held, freed   uint32
			proto         uint8 = protoUDP
			before, after       = readCounters(t, l.o), map[CounterKey]Counter(nil)
		)
		// Nothing in here may call t.Fatal: it runs on another goroutine.
		err := netns.Do(path, func() error {
			var sock io.Closer
			if network == "udp4" {
				conn, err := net.ListenPacket(network, "0.0.0.0:0")
				if err != nil {
					return err
				}
				port, sock = uint16(conn.LocalAddr().(*net.UDPAddr).Port), conn
			} else {
				ln, err := net.Listen(network, "0.0.0.0:0")
				if err != nil {
					return err
				}
				port, sock, proto = uint16(ln.Addr().(*net.TCPAddr).Port), ln, protoTCP
			}
			cfg := HostConfig{SNATAddr: hostAddr, UplinkIfindex: uplinkIfindex, NATPortMin: port, NATPortMax: port}
			if err := l.o.SetHostConfig(cfg); err != nil {
				return err
			}
			pkt := toOutside(flow{proto: proto, src: a1.Addr, sport: port, dst: outside, dport: 53, tcpFlags: tcpFlagSYN})
			var err error
			if held, _, err = run(l.u.ToUplink(), uplinkIfindex, pkt); err != nil {
				return err
			}
			if err := sock.Close(); err != nil {
				return err
			}
			freed, _, err = run(l.u.ToUplink(), uplinkIfindex, pkt)
			return err
		})
		if err != nil {
			t.Fatalf("%s: %v", network, err)
		}
		after = readCounters(t, l.o)
		if held != tcActShot || freed != tcActOK {
			t.Errorf("%s: verdict %d while a socket held port %d, %d after it closed; want %d, %d",
				network, held, port, freed, tcActShot, tcActOK)
		}
		delta := counterDelta(before, after)
		if delta[CounterKey{DirToUplink, VerdictDrop, ReasonNATExhausted}].Packets != 1 ||
			delta[CounterKey{DirToUplink, VerdictPass, ReasonSNAT}].Packets != 1 || len(delta) != 2 {
			t.Errorf("%s: counters moved by %v", network, delta)
		}
	}
}

func TestConntrackStatsAndFlush(t *testing.T) {
	l := loadNAT(t)
	const flows = 5
	for i := range uint16(flows) {
		f := flow{proto: protoUDP, src: a1.Addr, sport: 40200 + i, dst: outside, dport: 53}
		l.expect(t, hookToUplink, uplinkIfindex, toOutside(f), tcActOK, ReasonSNAT)
	}
	first := flow{proto: protoUDP, src: a1.Addr, sport: 40300, dst: outside, dport: 53, ipID: 9, ipFlags: 0x2000, payload: make([]byte, 16)}
	l.expect(t, hookToUplink, uplinkIfindex, toOutside(first), tcActOK, ReasonSNAT)
	entries, capacity, err := l.o.ConntrackStats()
	if err != nil {
		t.Fatal(err)
	}
	if entries != 2*(flows+1) || capacity != 262144 {
		t.Errorf("stats: %d entries of %d, want %d of 262144", entries, capacity, 2*(flows+1))
	}
	if n, err := countEntries[endpointFragKey, endpointFragEntry](l.o.objs.CtFrag); err != nil || n != 1 {
		t.Errorf("fragment entries: %d (%v), want 1", n, err)
	}
	if err := l.o.FlushConntrack(); err != nil {
		t.Fatal(err)
	}
	if entries, _, err := l.o.ConntrackStats(); err != nil || entries != 0 {
		t.Errorf("after flush: %d entries (%v)", entries, err)
	}
	if n, err := countEntries[endpointFragKey, endpointFragEntry](l.o.objs.CtFrag); err != nil || n != 0 {
		t.Errorf("fragment entries after flush: %d (%v)", n, err)
	}
	// Flushed: a reply of a forgotten connection is just traffic.
	masq := flow{proto: protoUDP, src: hostAddr, sport: 40200, dst: outside, dport: 53}
	l.expect(t, hookFromUplink, uplinkIfindex, fromOutside(masq.reply()), tcActOK, ReasonNotNAT)
}
