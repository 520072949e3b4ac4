//go:build linux

package bpf

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

// The NAT fixture: the endpoint fixture (networks A and B) plus an
// --internal network C, a host with uplink address hostAddr, an outside
// host and a router beyond the uplink, and published ports.
var (
	netC = Network{ID: 3, Subnet: pfx("10.3.0.0/24"), Gateway: ip("10.3.0.1"), RouterMAC: mac("02:fa:00:00:00:03"), Internal: true}
	c1   = Endpoint{HostIfindex: 301, Addr: ip("10.3.0.2"), MAC: mac("02:00:0a:03:00:02"), Network: 3}

	hostAddr  = ip("192.0.2.1")    // the uplink's address: masquerade source, published ports
	otherHost = ip("192.0.2.2")    // a host address only one port is published on
	outside   = ip("198.51.100.7") // a server or client beyond the uplink
	router    = ip("203.0.113.1")  // a router on the way, sending ICMP errors
	uplinkMAC = mac("02:00:00:00:0f:01")
	nextHop   = mac("02:00:00:00:0f:02")

	natPortMin = uint16(40000)
	natPortMax = uint16(40999)

	portWeb      = Port{Proto: ProtoTCP, HostPort: 8080, Target: a2.Addr, TargetPort: 80}
	portDNS      = Port{Proto: ProtoUDP, HostPort: 5353, Target: b1.Addr, TargetPort: 53}
	portExplicit = Port{Proto: ProtoTCP, HostAddr: otherHost, HostPort: 9090, Target: mA.Addr, TargetPort: 90}
	portInternal = Port{Proto: ProtoTCP, HostPort: 7070, Target: c1.Addr, TargetPort: 70}
	portNowhere  = Port{Proto: ProtoTCP, HostPort: 6060, Target: ip("10.1.0.250"), TargetPort: 60}
)

const uplinkIfindex = 2

// CT_F_* (fabric.h).
const (
	ctFlagReplied = 1
	ctFlagRST     = 8
	ctFlagSynSent = 16
)

// XDP verdicts (linux/bpf.h).
const (
	xdpDrop = 1
	xdpPass = 2
)

type natLab struct {
	o *Objects
	u *Uplink
}

func loadNAT(tb testing.TB) *natLab {
	tb.Helper()
	o := loadFixture(tb)
	put(tb, o, []Network{netC}, c1)
	l := &natLab{o: o, u: mustLoadOn(tb, o, "uplink", LoadUplink)}
	l.setPorts(tb, natPortMin, natPortMax)
	if err := o.SetHostAddrs([]netip.Addr{hostAddr, netA.Gateway, netB.Gateway, netC.Gateway}); err != nil {
		tb.Fatal(err)
	}
	for _, p := range []Port{portWeb, portDNS, portExplicit, portInternal, portNowhere} {
		if err := o.PutPort(p); err != nil {
			tb.Fatal(err)
		}
	}
	return l
}

func (l *natLab) setPorts(tb testing.TB, lo, hi uint16) {
	tb.Helper()
	err := l.o.SetHostConfig(HostConfig{SNATAddr: hostAddr, UplinkIfindex: uplinkIfindex, NATPortMin: lo, NATPortMax: hi})
	if err != nil {
		tb.Fatal(err)
	}
}

// hook names a program and the counter direction it counts under.
type hook int

const (
	hookFromEndpoint hook = iota
	hookFromUplink
	hookToUplink
	hookXDP
)

func (h hook) String() string {
	return [...]string{"from_endpoint", "from_uplink", "to_uplink", "xdp_uplink"}[h]
}

func (l *natLab) prog(h hook) (*ebpf.Program, Direction) {
	switch h {
	case hookFromEndpoint:
		return l.o.FromEndpoint(), DirFromEndpoint
	case hookFromUplink:
		return l.u.FromUplink(), DirFromUplink
	case hookToUplink:
		return l.u.ToUplink(), DirToUplink
	}
	return l.u.XDP(), DirXDPUplink
}

func xdpVerdictOf(ret uint32) Verdict {
	if ret == xdpPass {
		return VerdictPass
	}
	return VerdictDrop
}

// runHook runs pkt through one hook (ifindex: the ingress device, for the
// tc programs) and returns the verdict, the packet as left, and the
// counters that moved.
func (l *natLab) runHook(tb testing.TB, h hook, ifindex int, pkt []byte) (uint32, []byte, map[CounterKey]Counter) {
	tb.Helper()
	ret, out, delta, err := l.tryHook(tb, h, ifindex, pkt)
	if err != nil {
		tb.Fatal(err)
	}
	return ret, out, delta
}

// tryHook is runHook that returns the error of the run (BPF_PROG_TEST_RUN
// refusing the packet, say) instead of failing the test; the counters that
// moved are returned either way.
func (l *natLab) tryHook(tb testing.TB, h hook, ifindex int, pkt []byte) (uint32, []byte, map[CounterKey]Counter, error) {
	tb.Helper()
	prog, _ := l.prog(h)
	opts := ebpf.RunOptions{Data: pkt, DataOut: make([]byte, len(pkt)+256)}
	if h != hookXDP {
		opts.Context = skbContext{IngressIfindex: uint32(ifindex)}
	}
	before := readCounters(tb, l.o)
	ret, err := prog.Run(&opts)
	delta := counterDelta(before, readCounters(tb, l.o))
	if err != nil {
		return 0, nil, delta, fmt.Errorf("%s: run on %d-byte packet: %w", h, len(pkt), err)
	}
	return ret, opts.DataOut, delta, nil
}

// expect runs pkt through h and checks the verdict and that exactly one
// counter moved, by one packet of len(pkt) bytes, under the verdict the
// return code implies and the wanted reason. It returns the packet out.
func (l *natLab) expect(tb testing.TB, h hook, ifindex int, pkt []byte, wantRet uint32, wantReason Reason) []byte {
	tb.Helper()
	ret, out, delta := l.runHook(tb, h, ifindex, pkt)
	_, dir := l.prog(h)
	verdict := verdictOf(wantRet)
	if h == hookXDP {
		verdict = xdpVerdictOf(wantRet)
	}
	if ret != wantRet {
		tb.Errorf("%s: verdict %d, want %d (counters moved: %v)", h, ret, wantRet, delta)
	}
	want := map[CounterKey]Counter{{dir, verdict, wantReason}: {1, uint64(len(pkt))}}
	if !maps.Equal(delta, want) {
		tb.Errorf("%s: counters moved by %v, want %v", h, delta, want)
	}
	return out
}

// expectBothIngress checks pkt, from outside, at the uplink's tc ingress
// and at its XDP hook, which decide alike here: both pass it unchanged, or
// both drop it, for reason.
func (l *natLab) expectBothIngress(tb testing.TB, pkt []byte, drop bool, reason Reason) {
	tb.Helper()
	tcRet, xdpRet := uint32(tcActOK), uint32(xdpPass)
	if drop {
		tcRet, xdpRet = tcActShot, xdpDrop
	}
	l.expectOut(tb, hookFromUplink, uplinkIfindex, pkt, tcRet, reason, nil)
	l.expectOut(tb, hookXDP, 0, pkt, xdpRet, reason, nil)
}

// expectNoConntrack checks that what was sent so far made no connection
// table entry.
func (l *natLab) expectNoConntrack(tb testing.TB, what string) {
	tb.Helper()
	if entries, _, err := l.o.ConntrackStats(); err != nil || entries != 0 {
		tb.Errorf("%s made %d conntrack entries (%v)", what, entries, err)
	}
}

// expectOut is expect plus a byte-exact check of the packet out against
// want (nil: unchanged) and of its checksums.
func (l *natLab) expectOut(tb testing.TB, h hook, ifindex int, pkt []byte, wantRet uint32, wantReason Reason, want []byte) []byte {
	tb.Helper()
	out := l.expect(tb, h, ifindex, pkt, wantRet, wantReason)
	if want == nil {
		want = pkt
	}
	if !bytes.Equal(out, want) {
		tb.Errorf("%s: packet out\n got %x\nwant %x", h, out, want)
	}
	if err := verifyChecksums(out); err != nil {
		tb.Errorf("%s: %v", h, err)
	}
	return out
}

// A flow's packets as they appear on the wire, built from scratch, so that
// the programs' incremental checksum updates are compared with full ones.

type flow struct {
	proto            uint8
	src, dst         netip.Addr
	sport, dport     uint16 // ICMP: sport is the echo id
	tcpFlags         uint8
	payload          []byte
	ipID             uint16
	ipFlags, fragOff uint16
	options          []byte
}

const (
	tcpFlagFIN = 0x01
	tcpFlagSYN = 0x02
	tcpFlagRST = 0x04
	tcpFlagPSH = 0x08
	tcpFlagACK = 0x10
)

func (f flow) l4() []byte {
	switch f.proto {
	case protoTCP:
		return tcpSeg(f.src, f.dst, f.sport, f.dport, f.tcpFlags, f.payload)
	case protoUDP:
		return udp(f.src, f.dst, f.sport, f.dport, f.payload)
	case protoICMP:
		if f.dport != 0 && f.sport == 0 {
			return icmpEchoMsg(0, f.dport, 1, f.payload)
		}
		return icmpEchoMsg(8, f.sport, 1, f.payload)
	}
	return f.payload
}

func (f flow) ipv4() []byte {
	h := ipv4Hdr{src: f.src, dst: f.dst, proto: f.proto, id: f.ipID, flags: f.ipFlags, fragOff: f.fragOff, options: f.options}
	return h.marshal(f.l4())
}

// frame is the packet in an Ethernet frame from srcMAC to dstMAC.
func (f flow) frame(dstMAC, srcMAC []byte) []byte {
	return ether(dstMAC, srcMAC, etherTypeIPv4, f.ipv4())
}

// reply is the other direction's packet of the same connection.
func (f flow) reply() flow {
	r := f
	r.src, r.dst = f.dst, f.src
	r.sport, r.dport = f.dport, f.sport
	if f.proto == protoTCP {
		r.tcpFlags = tcpFlagACK
	}
	return r
}

// with returns f from src:sport to dst:dport.
func (f flow) with(src netip.Addr, sport uint16, dst netip.Addr, dport uint16) flow {
	f.src, f.sport, f.dst, f.dport = src, sport, dst, dport
	return f
}

func tcpSeg(src, dst netip.Addr, sport, dport uint16, flags uint8, payload []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, sport)
	b = binary.BigEndian.AppendUint16(b, dport)
	b = binary.BigEndian.AppendUint32(b, 1000)
	b = binary.BigEndian.AppendUint32(b, 2000)
	b = append(b, 5<<4, flags)
	b = binary.BigEndian.AppendUint16(b, 64240)
	b = append(b, 0, 0, 0, 0)
	b = append(b, payload...)
	binary.BigEndian.PutUint16(b[16:], checksum(b, pseudoSum(src, dst, protoTCP, len(b))))
	return b
}

func icmpEchoMsg(typ uint8, id, seq uint16, data []byte) []byte {
	b := []byte{typ, 0, 0, 0}
	b = binary.BigEndian.AppendUint16(b, id)
	b = binary.BigEndian.AppendUint16(b, seq)
	b = append(b, data...)
	binary.BigEndian.PutUint16(b[2:], checksum(b, 0))
	return b
}

// icmpError is an ICMP error of the given type and code quoting q.
func icmpError(typ, code uint8, q []byte) []byte {
	b := append([]byte{typ, code, 0, 0, 0, 0, 0, 0}, q...)
	binary.BigEndian.PutUint16(b[2:], checksum(b, 0))
	return b
}

// verifyChecksums checks the IPv4 header checksum of an Ethernet+IPv4
// frame, its TCP, UDP or ICMP checksum where the packet holds all of it,
// and for an ICMP error the quoted IPv4 header's checksum.
func verifyChecksums(frame []byte) error {
	if len(frame) < 14+20 || binary.BigEndian.Uint16(frame[12:]) != etherTypeIPv4 {
		return nil
	}
	ip := frame[14:]
	hlen := int(ip[0]&0xf) * 4
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	if hlen < 20 || tot < hlen || tot > len(ip) {
		return nil
	}
	if c := checksum(ip[:hlen], 0); c != 0 {
		return fmt.Errorf("IPv4 header checksum off by %#04x", c)
	}
	if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
		return nil // a fragment: the L4 checksum spans the datagram
	}
	src, dst := netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
	l4 := ip[hlen:tot]
	if need := map[byte]int{protoTCP: 20, protoUDP: 8, protoICMP: 8}[ip[9]]; len(l4) < need {
		return nil // no whole header: nothing a program could have translated
	}
	switch ip[9] {
	case protoTCP:
		if c := checksum(l4, pseudoSum(src, dst, protoTCP, len(l4))); c != 0 {
			return fmt.Errorf("TCP checksum off by %#04x", c)
		}
	case protoUDP:
		if binary.BigEndian.Uint16(l4[6:]) == 0 {
			return nil
		}
		if c := checksum(l4, pseudoSum(src, dst, protoUDP, len(l4))); c != 0 {
			return fmt.Errorf("UDP checksum off by %#04x", c)
		}
	case protoICMP:
		if c := checksum(l4, 0); c != 0 {
			return fmt.Errorf("ICMP checksum off by %#04x", c)
		}
		if len(l4) >= 8+20 && (l4[0] == 3 || l4[0] == 11 || l4[0] == 12) {
			q := l4[8:]
			if qh := int(q[0]&0xf) * 4; qh >= 20 && qh <= len(q) {
				if c := checksum(q[:qh], 0); c != 0 {
					return fmt.Errorf("quoted IPv4 header checksum off by %#04x", c)
				}
			}
		}
	}
	return nil
}

// Frames as each hook sees them.

// fromOutside is f arriving on the uplink.
func fromOutside(f flow) []byte { return f.frame(uplinkMAC, nextHop) }

// toOutside is f leaving through the uplink.
func toOutside(f flow) []byte { return f.frame(nextHop, uplinkMAC) }

// fromSandbox is f as ep's sandbox sends it, to its router.
func fromSandbox(ep Endpoint, f flow) []byte { return f.frame(routerOf(ep).RouterMAC, ep.MAC) }

// toSandbox is f as a program delivers it to ep: from ep's router.
func toSandbox(ep Endpoint, f flow) []byte { return f.frame(ep.MAC, routerOf(ep).RouterMAC) }

// withMACs is frame with its Ethernet addresses replaced.
func withMACs(frame []byte, dst, src []byte) []byte {
	out := bytes.Clone(frame)
	copy(out[0:6], dst)
	copy(out[6:12], src)
	return out
}

func routerOf(ep Endpoint) Network {
	for _, n := range []Network{netA, netB, netC} {
		if n.ID == ep.Network {
			return n
		}
	}
	panic(fmt.Sprintf("no network %d", ep.Network))
}

// ct reads a conntrack entry; ok is false if there is none.
func (l *natLab) ct(tb testing.TB, k endpointCtKey) (endpointCtEntry, bool) {
	tb.Helper()
	var e endpointCtEntry
	err := l.o.objs.Ct.Lookup(k, &e)
	if err != nil {
		return e, false
	}
	return e, true
}

func ctKey(proto uint8, src netip.Addr, sport uint16, dst netip.Addr, dport uint16, dir endpointCtDir) endpointCtKey {
	return endpointCtKey{Saddr: be32(src), Daddr: be32(dst), Sport: be16(sport), Dport: be16(dport), Proto: proto, Dir: uint8(dir)}
}

// outPort is the source port (ICMP: the echo id) of a translated frame.
func outPort(frame []byte) uint16 {
	ip := frame[14:]
	l4 := ip[int(ip[0]&0xf)*4:]
	if ip[9] == protoICMP {
		return binary.BigEndian.Uint16(l4[4:])
	}
	return binary.BigEndian.Uint16(l4[0:])
}
