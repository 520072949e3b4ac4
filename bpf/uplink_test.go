//go:build linux

package bpf

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// TestHostTrafficUntouched: what is not a fabric flow passes every uplink
// program unchanged, the host's own connections above all.
func TestHostTrafficUntouched(t *testing.T) {
	l := loadNAT(t)
	ipv6 := make([]byte, 40)
	ipv6[0] = 6 << 4
	arpReq := pad(ether(broadcast, nextHop, etherTypeARP, arp(arpRequest, nextHop, router, zeroMAC, hostAddr).marshal()))
	hostOut := []flow{
		{proto: protoUDP, src: hostAddr, sport: 40001, dst: outside, dport: 53, payload: []byte("host query")},
		{proto: protoTCP, src: hostAddr, sport: 22, dst: outside, dport: 50000, tcpFlags: tcpFlagACK},
		{proto: protoICMP, src: hostAddr, sport: 40003, dst: outside},
		{proto: 47, src: hostAddr, dst: outside, payload: make([]byte, 24)}, // GRE
	}
	for i, f := range hostOut {
		t.Run(fmt.Sprintf("host sends %d", i), func(t *testing.T) {
			l.expectOut(t, hookToUplink, uplinkIfindex, toOutside(f), tcActOK, ReasonNotNAT, nil)
			// Its replies: the ports of the first two are in the
			// masquerade range, but no fabric connection has them.
			r := f.reply()
			l.expectBothIngress(t, fromOutside(r), false, ReasonNotNAT)
		})
	}
	for name, frame := range map[string][]byte{
		"arp":  arpReq,
		"ipv6": ether(mac("33:33:00:00:00:01"), nextHop, etherTypeIPv6, ipv6),
		"lldp": pad(ether(mac("01:80:c2:00:00:0e"), nextHop, 0x88cc, nil)),
		"vlan in band": ether(uplinkMAC, nextHop, etherTypeVLAN,
			append([]byte{0, 10, 8, 0}, flow{proto: protoTCP, src: outside, sport: 1, dst: hostAddr, dport: 8080, tcpFlags: tcpFlagSYN}.ipv4()...)),
	} {
		t.Run(name, func(t *testing.T) {
			l.expectOut(t, hookFromUplink, uplinkIfindex, frame, tcActOK, ReasonNotNAT, nil)
			l.expectOut(t, hookXDP, 0, frame, xdpPass, ReasonNotNAT, nil)
			l.expectOut(t, hookToUplink, uplinkIfindex, frame, tcActOK, ReasonNotNAT, nil)
		})
	}
	t.Run("ssh to the host", func(t *testing.T) {
		f := flow{proto: protoTCP, src: outside, sport: 50000, dst: hostAddr, dport: 22, tcpFlags: tcpFlagSYN}
		l.expectBothIngress(t, fromOutside(f), false, ReasonNotNAT)
	})
	l.expectNoConntrack(t, "host traffic")
}

// TestInternalNetwork: an --internal network's endpoints are neither
// masqueraded nor reachable from outside, not even through a published
// port, and reach no published port either.
func TestInternalNetwork(t *testing.T) {
	l := loadNAT(t)
	out := flow{proto: protoUDP, src: c1.Addr, sport: 40400, dst: outside, dport: 53}
	l.expectOut(t, hookToUplink, uplinkIfindex, toOutside(out), tcActShot, ReasonInternal, nil)
	hairpin := flow{proto: protoTCP, src: c1.Addr, sport: 40401, dst: hostAddr, dport: 8080, tcpFlags: tcpFlagSYN}
	l.expectOut(t, hookFromEndpoint, c1.HostIfindex, fromSandbox(c1, hairpin), tcActShot, ReasonInternal, nil)
	toInternal := flow{proto: protoTCP, src: a1.Addr, sport: 40402, dst: hostAddr, dport: 7070, tcpFlags: tcpFlagSYN}
	l.expectOut(t, hookFromEndpoint, a1.HostIfindex, fromSandbox(a1, toInternal), tcActShot, ReasonInternal, nil)
	for _, f := range []flow{
		{proto: protoTCP, src: outside, sport: 50000, dst: hostAddr, dport: 7070, tcpFlags: tcpFlagSYN}, // published
		{proto: protoTCP, src: outside, sport: 50000, dst: c1.Addr, dport: 70, tcpFlags: tcpFlagSYN},    // routed
	} {
		l.expectBothIngress(t, fromOutside(f), true, ReasonInternal)
	}
	l.expectNoConntrack(t, "internal traffic")
}

// TestNoOwner: traffic from outside to a fabric address no endpoint holds
// is dropped early; the gateway, held addresses and everything else pass.
func TestNoOwner(t *testing.T) {
	l := loadNAT(t)
	to := func(dst string) flow {
		return flow{proto: protoUDP, src: outside, sport: 50000, dst: ip(dst), dport: 9, payload: []byte("x")}
	}
	for _, c := range []struct {
		dst    string
		xdpRet uint32
		tcRet  uint32
		reason Reason
	}{
		{"10.1.0.200", xdpDrop, tcActShot, ReasonNoOwner},
		{"10.1.0.255", xdpDrop, tcActShot, ReasonNoOwner},
		{"10.2.0.77", xdpDrop, tcActShot, ReasonNoOwner},
		{"10.1.0.1", xdpPass, tcActOK, ReasonNotNAT}, // gateway, on the host
		{"10.1.0.2", xdpPass, tcActOK, ReasonNotNAT}, // a1: the host routes it
		{"10.99.0.1", xdpPass, tcActOK, ReasonNotNAT},
		{"192.0.2.1", xdpPass, tcActOK, ReasonNotNAT},
	} {
		t.Run(c.dst, func(t *testing.T) {
			f := to(c.dst)
			l.expectOut(t, hookXDP, 0, fromOutside(f), c.xdpRet, c.reason, nil)
			l.expectOut(t, hookFromUplink, uplinkIfindex, fromOutside(f), c.tcRet, c.reason, nil)
			later := f
			later.ipID, later.fragOff = 5, 100
			l.expectOut(t, hookXDP, 0, fromOutside(later), c.xdpRet, c.reason, nil)
		})
	}
	t.Run("subnet index follows the networks", func(t *testing.T) {
		if err := l.o.DeleteNetwork(netB.ID); err != nil {
			t.Fatal(err)
		}
		l.expectOut(t, hookXDP, 0, fromOutside(to("10.2.0.77")), xdpPass, ReasonNotNAT, nil)
		moved := netB
		moved.Subnet, moved.Gateway = pfx("10.20.0.0/16"), ip("10.20.0.1")
		if err := l.o.PutNetwork(netB); err != nil {
			t.Fatal(err)
		}
		if err := l.o.PutNetwork(moved); err != nil {
			t.Fatal(err)
		}
		l.expectOut(t, hookXDP, 0, fromOutside(to("10.2.0.77")), xdpPass, ReasonNotNAT, nil)
		l.expectOut(t, hookXDP, 0, fromOutside(to("10.20.5.5")), xdpDrop, ReasonNoOwner, nil)
		l.expectOut(t, hookXDP, 0, fromOutside(to("10.20.0.1")), xdpPass, ReasonNotNAT, nil)
		var id uint32
		if err := l.o.objs.Subnets.Lookup(subnetKey(netB.Subnet), &id); !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Errorf("old subnet still indexed (network %d, %v)", id, err)
		}
	})
}

// TestUplinkFragmentsAndOptions: options are carried through NAT; a first
// fragment is translated and the later ones follow it; a later fragment
// whose first was not seen is dropped where it would leak an endpoint's
// address and passed where it is the host's business.
func TestUplinkFragmentsAndOptions(t *testing.T) {
	l := loadNAT(t)
	routerAlert := []byte{0x94, 0x04, 0x00, 0x00}
	nops := bytes.Repeat([]byte{0x01}, 40)
	for name, opts := range map[string][]byte{"router alert": routerAlert, "IHL 15": nops} {
		t.Run(name, func(t *testing.T) {
			f := flow{proto: protoTCP, src: a1.Addr, sport: 40500 + uint16(len(opts)), dst: outside, dport: 80, tcpFlags: tcpFlagSYN, options: opts}
			masq := f.with(hostAddr, f.sport, outside, 80)
			l.expectOut(t, hookToUplink, uplinkIfindex, toOutside(f), tcActOK, ReasonSNAT, toOutside(masq))
			l.expectOut(t, hookFromUplink, uplinkIfindex, fromOutside(masq.reply()), tcActRedirect, ReasonSNATReply, toSandbox(a1, f.reply()))
			l.expectOut(t, hookXDP, 0, fromOutside(masq.reply()), xdpPass, ReasonSNATReply, fromOutside(f.reply()))
			in := flow{proto: protoUDP, src: outside, sport: 50000 + uint16(len(opts)), dst: hostAddr, dport: 5353, options: opts, payload: []byte("q")}
			l.expectOut(t, hookFromUplink, uplinkIfindex, fromOutside(in), tcActRedirect, ReasonDNAT,
				toSandbox(b1, in.with(outside, in.sport, b1.Addr, 53)))
		})
	}

	t.Run("masquerade", func(t *testing.T) { testFragmentsMasquerade(t, l) })

	t.Run("hairpin", func(t *testing.T) {
		first := flow{proto: protoUDP, src: a1.Addr, sport: 40700, dst: hostAddr, dport: 5353, ipID: 55, ipFlags: 0x2000, payload: make([]byte, 24)}
		in := first.with(a1.Addr, 40700, b1.Addr, 53)
		l.expectOut(t, hookFromEndpoint, a1.HostIfindex, fromSandbox(a1, first), tcActRedirect, ReasonHairpin, toSandbox(b1, in))
		l.expectOut(t, hookFromEndpoint, a1.HostIfindex, laterFrame(first, func(f flow) []byte { return fromSandbox(a1, f) }),
			tcActRedirect, ReasonHairpin, laterFrame(in, func(f flow) []byte { return toSandbox(b1, f) }))
	})

	t.Run("not translatable", func(t *testing.T) {
		gre := flow{proto: 47, src: a1.Addr, dst: outside, payload: make([]byte, 24)}
		l.expectOut(t, hookToUplink, uplinkIfindex, toOutside(gre), tcActShot, ReasonNATUnsupported, nil)
		timestamp := ether(nextHop, uplinkMAC, etherTypeIPv4, ipv4Hdr{src: a1.Addr, dst: outside, proto: protoICMP}.marshal(icmpEchoMsg(13, 1, 1, make([]byte, 12))))
		l.expectOut(t, hookToUplink, uplinkIfindex, timestamp, tcActShot, ReasonNATUnsupported, nil)
		// A UDP header cut short by its own total length.
		short := ether(nextHop, uplinkMAC, etherTypeIPv4, ipv4Hdr{src: a1.Addr, dst: outside, proto: protoUDP}.marshal([]byte{1, 2, 3, 4}))
		l.expectOut(t, hookToUplink, uplinkIfindex, short, tcActShot, ReasonMalformed, nil)
		// Lying headers from an endpoint never leave.
		bad := editIPv4(toOutside(flow{proto: protoUDP, src: a1.Addr, sport: 1, dst: outside, dport: 2}), func(h []byte) { h[0] = 4<<4 | 15 })
		l.expectOut(t, hookToUplink, uplinkIfindex, bad, tcActShot, ReasonMalformed, nil)
	})
}

// laterFragment is the second fragment of f's datagram: only the IPv4 header
// (which says so) and raw payload, no ports.
func laterFragment(f flow) flow {
	g := f
	g.fragOff, g.ipFlags, g.payload = 3, 0, []byte("the rest of the datagram")
	return g
}

// laterFrame is that fragment in the frame that frame builds (its MACs),
// built by hand: the flow builder would add an L4 header.
func laterFrame(f flow, frame func(flow) []byte) []byte {
	g := laterFragment(f)
	h := ipv4Hdr{src: g.src, dst: g.dst, proto: g.proto, id: g.ipID, fragOff: g.fragOff, options: g.options}
	ipPkt := h.marshal(g.payload)
	out := frame(flow{})
	return append(out[:14], ipPkt...)
}

// testFragmentsMasquerade: a masqueraded datagram's later fragment
// follows its first out, and the reply's back in; a stray later
// fragment, or a first too short for the ports, never leaves with an
// endpoint's address, and one coming in is the host's business.
func testFragmentsMasquerade(t *testing.T, l *natLab) {
	first := flow{proto: protoUDP, src: a1.Addr, sport: 40600, dst: outside, dport: 53, ipID: 77, ipFlags: 0x2000, payload: make([]byte, 24)}
	masq := first.with(hostAddr, 40600, outside, 53)
	l.expectOut(t, hookToUplink, uplinkIfindex, toOutside(first), tcActOK, ReasonSNAT, toOutside(masq))
	l.expectOut(t, hookToUplink, uplinkIfindex, laterFrame(first, toOutside), tcActOK, ReasonSNAT, laterFrame(masq, toOutside))
	// A later fragment of another datagram: its first was never
	// seen, and it cannot go out with the endpoint's address.
	stray := first
	stray.ipID = 78
	l.expectOut(t, hookToUplink, uplinkIfindex, laterFrame(stray, toOutside), tcActShot, ReasonFragment, nil)
	// Nor can a first fragment too short to hold the ports' header.
	tiny := flow{proto: protoTCP, src: a1.Addr, dst: outside, ipID: 79, ipFlags: 0x2000}
	tinyFrame := append(tiny.frame(nextHop, uplinkMAC)[:14], ipv4Hdr{src: a1.Addr, dst: outside, proto: protoTCP, id: 79, flags: 0x2000}.marshal(make([]byte, 8))...)
	l.expectOut(t, hookToUplink, uplinkIfindex, tinyFrame, tcActShot, ReasonFragment, nil)

	// The reply in fragments.
	rfirst := masq.reply()
	rfirst.ipID, rfirst.ipFlags, rfirst.payload = 900, 0x2000, make([]byte, 24)
	back := first.reply()
	back.ipID, back.ipFlags, back.payload = 900, 0x2000, make([]byte, 24)
	l.expectOut(t, hookFromUplink, uplinkIfindex, fromOutside(rfirst), tcActRedirect, ReasonSNATReply, toSandbox(a1, back))
	l.expectOut(t, hookFromUplink, uplinkIfindex, laterFrame(rfirst, fromOutside), tcActRedirect, ReasonSNATReply,
		withMACs(laterFrame(back, fromOutside), a1.MAC, netA.RouterMAC))
	l.expectOut(t, hookXDP, 0, laterFrame(rfirst, fromOutside), xdpPass, ReasonSNATReply, laterFrame(back, fromOutside))
	// A later fragment nothing is known of is the host's business.
	rstray := rfirst
	rstray.ipID = 901
	l.expectOut(t, hookFromUplink, uplinkIfindex, laterFrame(rstray, fromOutside), tcActOK, ReasonNotNAT, nil)
	l.expectOut(t, hookXDP, 0, laterFrame(rstray, fromOutside), xdpPass, ReasonNotNAT, nil)
}

// TestUplinkTruncated cuts frames at every length up to 60 bytes: every
// hook the kernel runs must count the frame once, as malformed, and only
// drop it if it is an endpoint's on the way out.
func TestUplinkTruncated(t *testing.T) {
	l := loadNAT(t)
	fromEP := toOutside(flow{proto: protoUDP, src: a1.Addr, sport: 40800, dst: outside, dport: 53, payload: make([]byte, 40)})
	fromOut := fromOutside(flow{proto: protoUDP, src: outside, sport: 50000, dst: hostAddr, dport: 5353, payload: make([]byte, 40)})
	for _, c := range []struct {
		h   hook
		pkt []byte
		// want is the verdict and reason for a frame of n bytes that the
		// kernel ran the program on.
		want func(n int) (uint32, Reason)
	}{
		{hookToUplink, fromEP, func(n int) (uint32, Reason) {
			if n < 14+20 {
				return tcActOK, ReasonMalformed
			}
			return tcActShot, ReasonMalformed // the source is an endpoint's
		}},
		{hookFromUplink, fromOut, func(int) (uint32, Reason) { return tcActOK, ReasonMalformed }},
		{hookXDP, fromOut, func(int) (uint32, Reason) { return xdpPass, ReasonMalformed }},
	} {
		for n := 0; n <= 60; n++ {
			t.Run(fmt.Sprintf("%s/%d", c.h, n), func(t *testing.T) {
				_, dir := l.prog(c.h)
				ret, _, delta, err := l.tryHook(t, c.h, uplinkIfindex, c.pkt[:n])
				switch {
				case err != nil && errors.Is(err, unix.EINVAL) && n < 14+20:
					if len(delta) != 0 {
						t.Errorf("counters moved for a frame the kernel refused: %v", delta)
					}
				case err != nil:
					t.Fatal(err)
				default:
					wantRet, wantReason := c.want(n)
					if n < 14 {
						wantReason = ReasonMalformed
					}
					if ret != wantRet {
						t.Errorf("verdict %d, want %d", ret, wantRet)
					}
					verdict := verdictOf(wantRet)
					if c.h == hookXDP {
						verdict = xdpVerdictOf(wantRet)
					}
					want := map[CounterKey]Counter{{dir, verdict, wantReason}: {1, uint64(n)}}
					if !maps.Equal(delta, want) {
						t.Errorf("counters moved by %v, want %v", delta, want)
					}
				}
			})
		}
	}
}
