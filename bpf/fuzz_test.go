//go:build linux

package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// Fuzzing the packet programs: random frames (seeded with valid ones of
// every kind the unit tests use) through BPF_PROG_TEST_RUN, checking what
// must hold for any input:
//
//   - the run succeeds and the verdict is one the hook may return;
//   - exactly one counter moved, by one packet of the frame's length,
//     under the verdict the return code implies (every path is counted
//     exactly once);
//   - from an endpoint, a packet forwarded untranslated to another
//     sandbox or into the tunnel carried the endpoint's own source MAC
//     and IPv4 address (no spoofed source gets through), and an ARP
//     answer goes back to the asking endpoint only.
//
// CI runs each for a bounded time (make fuzz-bpf); plain `go test` runs
// the seeds.

// fuzzIfindexes are the ingress devices the fuzzer picks from: the
// fixture's endpoints and one the maps do not know.
var fuzzIfindexes = []int{a1.HostIfindex, a2.HostIfindex, b1.HostIfindex, mA.HostIfindex, c1.HostIfindex, o1.HostIfindex, 999}

func fuzzEndpointOf(ifindex int) (Endpoint, bool) {
	for _, ep := range []Endpoint{a1, a2, b1, mA, c1, o1} {
		if ep.HostIfindex == ifindex {
			return ep, true
		}
	}
	return Endpoint{}, false
}

func fuzzSeeds() [][]byte {
	syn := flow{proto: protoTCP, src: a1.Addr, sport: 45000, dst: hostAddr, dport: 8080, tcpFlags: tcpFlagSYN}
	udpOut := flow{proto: protoUDP, src: a1.Addr, sport: 5000, dst: outside, dport: 53, payload: []byte("q")}
	frag := flow{proto: protoUDP, src: a1.Addr, sport: 5000, dst: outside, dport: 53, payload: make([]byte, 32), ipFlags: 0x2000}
	ping := flow{proto: protoICMP, src: a1.Addr, sport: 7, dst: outside, payload: []byte("ping")}
	return [][]byte{
		arpRequestFrom(a1, netA.Gateway),
		arpRequestFrom(a1, a2.Addr),
		fromSandbox(a1, flow{proto: protoTCP, src: a1.Addr, sport: 40000, dst: a2.Addr, dport: 80, tcpFlags: tcpFlagSYN}),
		fromSandbox(a1, syn),
		fromSandbox(a1, udpOut),
		fromSandbox(a1, frag),
		fromSandbox(a1, ping),
		fromSandbox(o1, flow{proto: protoUDP, src: o1.Addr, sport: 1, dst: remote1.Addr, dport: 2, payload: []byte("x")}),
		fromSandbox(a1, flow{proto: protoUDP, src: a1.Addr, sport: 1, dst: netA.Gateway, dport: 7946, payload: []byte("x")}),
		fromOutside(flow{proto: protoTCP, src: outside, sport: 50000, dst: hostAddr, dport: 8080, tcpFlags: tcpFlagSYN}),
		fromOutside(flow{proto: protoICMP, src: outside, sport: 9, dst: hostAddr, payload: []byte("p")}),
		toOutside(udpOut),
		toOutside(syn.with(a1.Addr, 45000, outside, 443)),
	}
}

// loadFuzzLab is the NAT fixture plus the overlay network, the tunnel
// device index, a guarded port and a conntrack quota.
func loadFuzzLab(tb testing.TB) *natLab {
	l := loadNAT(tb)
	if err := l.o.PutNetwork(netO); err != nil {
		tb.Fatal(err)
	}
	if err := l.o.PutEndpoint(o1); err != nil {
		tb.Fatal(err)
	}
	if err := l.o.PutRemote(remote1); err != nil {
		tb.Fatal(err)
	}
	err := l.o.SetHostConfig(HostConfig{SNATAddr: hostAddr, UplinkIfindex: uplinkIfindex, NATPortMin: natPortMin, NATPortMax: natPortMax, TunnelIfindex: tunnelIfindex})
	if err != nil {
		tb.Fatal(err)
	}
	if err := l.o.SetPolicy(Policy{GuardTCP: []uint16{7946}, GuardUDP: []uint16{7946, 4789}, CTPendingMax: 64}); err != nil {
		tb.Fatal(err)
	}
	return l
}

// fuzzFrames loads the lab once and runs check on every frame the fuzzer
// makes that is worth a run: the kernel refuses frames shorter than
// Ethernet's header, and anything over 1600 bytes is past every MTU here.
func fuzzFrames(f *testing.F, check func(t *testing.T, l *natLab, sel uint8, frame []byte)) {
	for i, s := range fuzzSeeds() {
		f.Add(uint8(i), s)
	}
	l := loadFuzzLab(f)
	f.Fuzz(func(t *testing.T, sel uint8, frame []byte) {
		if len(frame) < 14 || len(frame) > 1600 {
			return
		}
		check(t, l, sel, frame)
	})
}

func FuzzEndpointProgram(f *testing.F) {
	fuzzFrames(f, func(t *testing.T, l *natLab, sel uint8, frame []byte) {
		ifindex := fuzzIfindexes[int(sel)%len(fuzzIfindexes)]
		ret, out, delta, ok := l.fuzzRun(t, hookFromEndpoint, ifindex, frame)
		if !ok {
			return
		}
		reason := checkOneCount(t, delta, DirFromEndpoint, verdictOf(ret), len(frame))
		switch ret {
		case tcActOK, tcActShot, tcActRedirect:
		default:
			t.Fatalf("verdict %d", ret)
		}
		if ret != tcActRedirect {
			return
		}
		ep, known := fuzzEndpointOf(ifindex)
		if !known {
			t.Fatalf("unknown ifindex %d redirected (%s)", ifindex, reason)
		}
		if !bytes.Equal(frame[6:12], ep.MAC) {
			t.Fatalf("frame from %s with source MAC %x redirected (%s)", ep.Addr, frame[6:12], reason)
		}
		switch reason {
		case ReasonForward, ReasonToTunnel:
			if src := ipv4Src(frame); src != ep.Addr {
				t.Fatalf("packet with source %s from endpoint %s forwarded (%s)", src, ep.Addr, reason)
			}
			if src := ipv4Src(out); src != ep.Addr {
				t.Fatalf("forwarded packet leaves with source %s, endpoint is %s", src, ep.Addr)
			}
		case ReasonARPReply:
			if !bytes.Equal(out[0:6], ep.MAC) {
				t.Fatalf("ARP answer to %x, the asker is %s", out[0:6], ep.MAC)
			}
		case ReasonHairpin, ReasonDNATReply:
			if src := ipv4Src(frame); src != ep.Addr {
				t.Fatalf("packet with source %s from endpoint %s translated (%s)", src, ep.Addr, reason)
			}
		default:
			t.Fatalf("redirect with reason %s", reason)
		}
	})
}

func FuzzUplinkPrograms(f *testing.F) {
	fuzzFrames(f, func(t *testing.T, l *natLab, sel uint8, frame []byte) {
		h := []hook{hookFromUplink, hookToUplink, hookXDP}[int(sel)%3]
		ret, _, delta, ok := l.fuzzRun(t, h, uplinkIfindex, frame)
		if !ok {
			return
		}
		_, dir := l.prog(h)
		verdict := verdictOf(ret)
		allowed := map[uint32]bool{tcActOK: true, tcActShot: true, tcActRedirect: true}
		if h == hookXDP {
			verdict = xdpVerdictOf(ret)
			allowed = map[uint32]bool{xdpDrop: true, xdpPass: true}
		}
		if !allowed[ret] {
			t.Fatalf("%s: verdict %d", h, ret)
		}
		checkOneCount(t, delta, dir, verdict, len(frame))
	})
}

// fuzzRun is runHook for the fuzzer: a frame BPF_PROG_TEST_RUN itself
// refuses (EINVAL: an IPv4 ethertype without room for the header, say)
// never reached the program and is not a finding.
func (l *natLab) fuzzRun(t *testing.T, h hook, ifindex int, pkt []byte) (uint32, []byte, map[CounterKey]Counter, bool) {
	t.Helper()
	ret, out, delta, err := l.tryHook(t, h, ifindex, pkt)
	if errors.Is(err, unix.EINVAL) {
		return 0, nil, nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return ret, out, delta, true
}

// checkOneCount checks that delta is one packet of n bytes under (dir,
// verdict, some reason) and returns that reason.
func checkOneCount(t *testing.T, delta map[CounterKey]Counter, dir Direction, verdict Verdict, n int) Reason {
	t.Helper()
	if len(delta) != 1 {
		t.Fatalf("%d counters moved, want 1: %v", len(delta), delta)
	}
	for k, c := range delta {
		if k.Direction != dir || k.Verdict != verdict || c != (Counter{1, uint64(n)}) {
			t.Fatalf("counted %v %+v, want one %d-byte packet under %s/%s", k, c, n, dir, verdict)
		}
		return k.Reason
	}
	return 0
}

// ipv4Src is an IPv4 frame's source address (zero if it has none).
func ipv4Src(frame []byte) netip.Addr {
	if len(frame) < 34 || binary.BigEndian.Uint16(frame[12:]) != 0x0800 {
		return netip.Addr{}
	}
	return netip.AddrFrom4([4]byte(frame[26:30]))
}
