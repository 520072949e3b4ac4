//go:build linux

package bpf

import (
	"fmt"
	"net/netip"
	"testing"
)

// TestSNAT: an endpoint's connection to the outside leaves with the host's
// address and, its port being in the range, its own port; replies come
// back translated to the endpoint, at tc (redirected to its veth) and at
// XDP (in place, then delivered by tc).
func TestSNAT(t *testing.T) {
	l := loadNAT(t)
	for _, f := range []flow{
		{proto: protoUDP, src: a1.Addr, sport: 40001, dst: outside, dport: 53, payload: []byte("query")},
		{proto: protoTCP, src: a1.Addr, sport: 40002, dst: outside, dport: 443, tcpFlags: tcpFlagSYN},
		{proto: protoICMP, src: a1.Addr, sport: 40003, dst: outside, payload: []byte("ping")},
		{proto: protoUDP, src: b1.Addr, sport: 40004, dst: outside, dport: 123, payload: make([]byte, 48)},
	} {
		t.Run(fmt.Sprintf("%d from %s", f.proto, f.src), func(t *testing.T) {
			ep := a1
			if f.src == b1.Addr {
				ep = b1
			}
			// The endpoint program leaves it to the host, which routes it
			// to the uplink.
			l.expectOut(t, hookFromEndpoint, ep.HostIfindex, fromSandbox(ep, f), tcActOK, ReasonToHost, nil)
			masq := f.with(hostAddr, f.sport, f.dst, f.dport)
			for range 2 { // the second packet finds the connection
				l.expectOut(t, hookToUplink, uplinkIfindex, toOutside(f), tcActOK, ReasonSNAT, toOutside(masq))
			}

			reply := masq.reply()
			l.expectOut(t, hookFromUplink, uplinkIfindex, fromOutside(reply), tcActRedirect, ReasonSNATReply,
				toSandbox(ep, f.reply()))
			xdpOut := l.expectOut(t, hookXDP, 0, fromOutside(reply), xdpPass, ReasonSNATReply, fromOutside(f.reply()))
			l.expectOut(t, hookFromUplink, uplinkIfindex, xdpOut, tcActRedirect, ReasonSNATReply, toSandbox(ep, f.reply()))
		})
	}
}

// TestSNATPortOutOfRange: a source port outside the range is replaced by
// one inside it, the same for every packet of the connection.
func TestSNATPortOutOfRange(t *testing.T) {
	l := loadNAT(t)
	f := flow{proto: protoUDP, src: a1.Addr, sport: 5000, dst: outside, dport: 53, payload: []byte("q")}
	out := l.expect(t, hookToUplink, uplinkIfindex, toOutside(f), tcActOK, ReasonSNAT)
	port := outPort(out)
	if port < natPortMin || port > natPortMax {
		t.Fatalf("masqueraded to port %d, outside %d-%d", port, natPortMin, natPortMax)
	}
	masq := f.with(hostAddr, port, outside, 53)
	l.expectOut(t, hookToUplink, uplinkIfindex, toOutside(f), tcActOK, ReasonSNAT, toOutside(masq))
	l.expectOut(t, hookFromUplink, uplinkIfindex, fromOutside(masq.reply()), tcActRedirect, ReasonSNATReply,
		toSandbox(a1, f.reply()))

	// Both directions are in conntrack, each the reverse of the other.
	orig, ok := l.ct(t, ctKey(protoUDP, a1.Addr, 5000, outside, 53, endpointCtDirCT_DIR_OUT))
	if !ok || orig.Kind != uint8(endpointCtKindCT_KIND_SNAT) || orig.Reply != 0 || fromBE16(orig.Sport) != port {
		t.Errorf("original entry %+v (found %v)", orig, ok)
	}
	rep, ok := l.ct(t, ctKey(protoUDP, outside, 53, hostAddr, port, endpointCtDirCT_DIR_IN))
	if !ok || rep.Kind != uint8(endpointCtKindCT_KIND_SNAT) || rep.Reply != 1 || rep.Daddr != be32(a1.Addr) {
		t.Errorf("reply entry %+v (found %v)", rep, ok)
	}
	// The reply was seen: the state reached both entries.
	if orig.Flags&ctFlagReplied == 0 || rep.Flags&ctFlagReplied == 0 {
		t.Errorf("replied flag: original %#x, reply %#x", orig.Flags, rep.Flags)
	}
}

// TestDNAT: a connection from outside to a published port goes to its
// endpoint; the endpoint's replies leave through the host (from_endpoint
// leaves them alone) and to_uplink gives them the published address.
func TestDNAT(t *testing.T) {
	l := loadNAT(t)
	for _, c := range []struct {
		name   string
		f      flow
		target Endpoint
		port   uint16
	}{
		{"tcp wildcard", flow{proto: protoTCP, src: outside, sport: 50000, dst: hostAddr, dport: 8080, tcpFlags: tcpFlagSYN}, a2, 80},
		{"udp on network B", flow{proto: protoUDP, src: outside, sport: 50001, dst: hostAddr, dport: 5353, payload: []byte("dns")}, b1, 53},
		{"explicit host address", flow{proto: protoTCP, src: outside, sport: 50002, dst: otherHost, dport: 9090, tcpFlags: tcpFlagSYN}, mA, 90},
		{"wildcard on a gateway address", flow{proto: protoTCP, src: outside, sport: 50003, dst: netB.Gateway, dport: 8080, tcpFlags: tcpFlagSYN}, a2, 80},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := c.f.with(c.f.src, c.f.sport, c.target.Addr, c.port)
			l.expectOut(t, hookFromUplink, uplinkIfindex, fromOutside(c.f), tcActRedirect, ReasonDNAT, toSandbox(c.target, in))
			// A later packet uses the connection, at XDP and then tc.
			next := c.f
			next.tcpFlags = tcpFlagACK
			nextIn := in
			nextIn.tcpFlags = tcpFlagACK
			xdpOut := l.expectOut(t, hookXDP, 0, fromOutside(next), xdpPass, ReasonDNAT, fromOutside(nextIn))
			l.expectOut(t, hookFromUplink, uplinkIfindex, xdpOut, tcActRedirect, ReasonDNAT, toSandbox(c.target, nextIn))

			reply := in.reply()
			l.expectOut(t, hookFromEndpoint, c.target.HostIfindex, fromSandbox(c.target, reply), tcActOK, ReasonToHost, nil)
			l.expectOut(t, hookToUplink, uplinkIfindex, toOutside(reply), tcActOK, ReasonDNATReply, toOutside(c.f.reply()))
		})
	}

	t.Run("new connection at XDP", func(t *testing.T) {
		f := flow{proto: protoUDP, src: outside, sport: 50010, dst: hostAddr, dport: 5353, payload: []byte("x")}
		in := f.with(outside, 50010, b1.Addr, 53)
		xdpOut := l.expectOut(t, hookXDP, 0, fromOutside(f), xdpPass, ReasonDNAT, fromOutside(in))
		l.expectOut(t, hookFromUplink, uplinkIfindex, xdpOut, tcActRedirect, ReasonDNAT, toSandbox(b1, in))
		l.expectOut(t, hookToUplink, uplinkIfindex, toOutside(in.reply()), tcActOK, ReasonDNATReply, toOutside(f.reply()))
	})

	t.Run("not published", func(t *testing.T) {
		for _, f := range []flow{
			{proto: protoTCP, src: outside, sport: 50020, dst: hostAddr, dport: 8081, tcpFlags: tcpFlagSYN},         // no such port
			{proto: protoUDP, src: outside, sport: 50021, dst: hostAddr, dport: 8080},                               // TCP only
			{proto: protoTCP, src: outside, sport: 50022, dst: ip("192.0.2.99"), dport: 8080, tcpFlags: tcpFlagSYN}, // not the host's
			{proto: protoTCP, src: outside, sport: 50023, dst: hostAddr, dport: 9090, tcpFlags: tcpFlagSYN},         // published on otherHost only
			{proto: protoTCP, src: outside, sport: 50024, dst: hostAddr, dport: 6060, tcpFlags: tcpFlagSYN},         // its endpoint is not here
		} {
			l.expectBothIngress(t, fromOutside(f), false, ReasonNotNAT)
		}
	})
}

// TestHairpin: an endpoint reaching a published port of its own host goes
// straight to the target endpoint, on its own network or another; the
// replies come back translated, past the isolation check.
func TestHairpin(t *testing.T) {
	l := loadNAT(t)
	for _, c := range []struct {
		name           string
		client, target Endpoint
		f              flow
		port           uint16
	}{
		{"same network", a1, a2, flow{proto: protoTCP, src: a1.Addr, sport: 45000, dst: hostAddr, dport: 8080, tcpFlags: tcpFlagSYN}, 80},
		{"other network", b1, a2, flow{proto: protoTCP, src: b1.Addr, sport: 45001, dst: hostAddr, dport: 8080, tcpFlags: tcpFlagSYN}, 80},
		{"udp to other network", a1, b1, flow{proto: protoUDP, src: a1.Addr, sport: 45002, dst: hostAddr, dport: 5353, payload: []byte("q")}, 53},
		{"through the gateway address", a1, a2, flow{proto: protoTCP, src: a1.Addr, sport: 45003, dst: netA.Gateway, dport: 8080, tcpFlags: tcpFlagSYN}, 80},
		{"explicit host address", b1, mA, flow{proto: protoTCP, src: b1.Addr, sport: 45004, dst: otherHost, dport: 9090, tcpFlags: tcpFlagSYN}, 90},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := c.f.with(c.client.Addr, c.f.sport, c.target.Addr, c.port)
			for range 2 {
				l.expectOut(t, hookFromEndpoint, c.client.HostIfindex, fromSandbox(c.client, c.f), tcActRedirect, ReasonHairpin,
					toSandbox(c.target, in))
			}
			l.expectOut(t, hookFromEndpoint, c.target.HostIfindex, fromSandbox(c.target, in.reply()), tcActRedirect, ReasonDNATReply,
				toSandbox(c.client, c.f.reply()))
		})
	}

	t.Run("isolation still holds outside the connection", func(t *testing.T) {
		// a2 answered b1 above through the published port; straight to
		// b1 it is still another network.
		f := flow{proto: protoTCP, src: a2.Addr, sport: 80, dst: b1.Addr, dport: 45999, tcpFlags: tcpFlagACK}
		l.expect(t, hookFromEndpoint, a2.HostIfindex, fromSandbox(a2, f), tcActShot, ReasonCrossNetwork)
	})
}

// TestSelfHairpin: a sandbox reaching its own published port sees its
// gateway as the client, not its own address (a martian to it).
func TestSelfHairpin(t *testing.T) {
	l := loadNAT(t)
	f := flow{proto: protoTCP, src: a2.Addr, sport: 46000, dst: hostAddr, dport: 8080, tcpFlags: tcpFlagSYN}
	in := f.with(netA.Gateway, 46000, a2.Addr, 80)
	l.expectOut(t, hookFromEndpoint, a2.HostIfindex, fromSandbox(a2, f), tcActRedirect, ReasonHairpin, toSandbox(a2, in))
	l.expectOut(t, hookFromEndpoint, a2.HostIfindex, fromSandbox(a2, in.reply()), tcActRedirect, ReasonDNATReply,
		toSandbox(a2, f.reply()))
}

// icmpErrorFrame is an ICMP error from src to dst quoting the first n
// bytes (all: n <= 0) of the IPv4 packet of q.
func icmpErrorFlow(src, dst netip.Addr, typ, code uint8, q flow, n int) []byte {
	quote := q.ipv4()
	if n > 0 && n < len(quote) {
		quote = quote[:n]
	}
	return ipv4Hdr{src: src, dst: dst, proto: protoICMP}.marshal(icmpError(typ, code, quote))
}

// TestICMPErrors: errors about translated packets are translated too, the
// quoted packet included, so that path MTU discovery and port unreachable
// reach the endpoint and the outside sees only the host.
func TestICMPErrors(t *testing.T) {
	l := loadNAT(t)
	orig := flow{proto: protoUDP, src: a1.Addr, sport: 40050, dst: outside, dport: 53, payload: []byte("query")}
	masq := orig.with(hostAddr, 40050, outside, 53)
	l.expect(t, hookToUplink, uplinkIfindex, toOutside(orig), tcActOK, ReasonSNAT)
	tcpOrig := flow{proto: protoTCP, src: a1.Addr, sport: 40051, dst: outside, dport: 443, tcpFlags: tcpFlagSYN, payload: []byte("hello")}
	tcpMasq := tcpOrig.with(hostAddr, 40051, outside, 443)
	l.expect(t, hookToUplink, uplinkIfindex, toOutside(tcpOrig), tcActOK, ReasonSNAT)
	pingOrig := flow{proto: protoICMP, src: a1.Addr, sport: 40052, dst: outside, payload: []byte("ping")}
	pingMasq := pingOrig.with(hostAddr, 40052, outside, 0)
	l.expect(t, hookToUplink, uplinkIfindex, toOutside(pingOrig), tcActOK, ReasonSNAT)

	for _, c := range []struct {
		name     string
		from     netip.Addr
		typ      uint8
		quoted   flow // as it left
		original flow // as the endpoint sent it
		n        int
	}{
		{"frag needed from a router, 28-byte quote", router, 3, masq, orig, 28},
		{"port unreachable from the server, whole quote", outside, 3, masq, orig, 0},
		{"time exceeded, TCP quoted with its checksum", router, 11, tcpMasq, tcpOrig, 40},
		{"TCP quoted without its checksum", router, 11, tcpMasq, tcpOrig, 28},
		{"about a ping", router, 11, pingMasq, pingOrig, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := icmpErrorFlow(c.from, hostAddr, c.typ, 4, c.quoted, c.n)
			want := icmpErrorFlow(c.from, a1.Addr, c.typ, 4, c.original, c.n)
			l.expectOut(t, hookFromUplink, uplinkIfindex, ethIPv4(uplinkMAC, nextHop, in), tcActRedirect, ReasonSNATReply,
				ethIPv4(a1.MAC, netA.RouterMAC, want))
			l.expectOut(t, hookXDP, 0, ethIPv4(uplinkMAC, nextHop, in), xdpPass, ReasonSNATReply, ethIPv4(uplinkMAC, nextHop, want))
		})
	}

	t.Run("from the endpoint about a masqueraded reply", func(t *testing.T) {
		// a1 got X's reply after closing its socket: port unreachable.
		in := icmpErrorFlow(a1.Addr, outside, 3, 3, orig.reply(), 0)
		want := icmpErrorFlow(hostAddr, outside, 3, 3, masq.reply(), 0)
		l.expectOut(t, hookFromEndpoint, a1.HostIfindex, ethIPv4(netA.RouterMAC, a1.MAC, in), tcActOK, ReasonToHost, nil)
		l.expectOut(t, hookToUplink, uplinkIfindex, ethIPv4(nextHop, uplinkMAC, in), tcActOK, ReasonSNAT, ethIPv4(nextHop, uplinkMAC, want))
	})

	t.Run("from a published port's endpoint", func(t *testing.T) { testICMPFromPublishedEndpoint(t, l) })

	t.Run("from outside about a published port's reply", func(t *testing.T) { testICMPAboutPublishedReply(t, l) })

	t.Run("hairpin", func(t *testing.T) { testICMPHairpin(t, l) })

	t.Run("about no known connection", func(t *testing.T) { testICMPUnknownConnection(t, l) })
}

// testICMPFromPublishedEndpoint: an error a published port's endpoint sends
// about what it was delivered leaves from the host, about what the outside
// sent.
func testICMPFromPublishedEndpoint(t *testing.T, l *natLab) {
	f := flow{proto: protoUDP, src: outside, sport: 50060, dst: hostAddr, dport: 5353, payload: []byte("dns")}
	delivered := f.with(outside, 50060, b1.Addr, 53)
	l.expect(t, hookFromUplink, uplinkIfindex, fromOutside(f), tcActRedirect, ReasonDNAT)
	in := icmpErrorFlow(b1.Addr, outside, 3, 3, delivered, 0)
	want := icmpErrorFlow(hostAddr, outside, 3, 3, f, 0)
	l.expectOut(t, hookToUplink, uplinkIfindex, ethIPv4(nextHop, uplinkMAC, in), tcActOK, ReasonDNATReply, ethIPv4(nextHop, uplinkMAC, want))
}

// testICMPAboutPublishedReply: an error from outside about a published
// port's reply reaches the endpoint, about what it sent.
func testICMPAboutPublishedReply(t *testing.T, l *natLab) {
	f := flow{proto: protoUDP, src: outside, sport: 50070, dst: hostAddr, dport: 5353, payload: []byte("dns")}
	delivered := f.with(outside, 50070, b1.Addr, 53)
	l.expect(t, hookFromUplink, uplinkIfindex, fromOutside(f), tcActRedirect, ReasonDNAT)
	l.expect(t, hookToUplink, uplinkIfindex, toOutside(delivered.reply()), tcActOK, ReasonDNATReply)
	in := icmpErrorFlow(router, hostAddr, 3, 4, f.reply(), 0)
	want := icmpErrorFlow(router, b1.Addr, 3, 4, delivered.reply(), 0)
	l.expectOut(t, hookFromUplink, uplinkIfindex, ethIPv4(uplinkMAC, nextHop, in), tcActRedirect, ReasonDNAT,
		ethIPv4(b1.MAC, netB.RouterMAC, want))
	l.expectOut(t, hookXDP, 0, ethIPv4(uplinkMAC, nextHop, in), xdpPass, ReasonDNAT, ethIPv4(uplinkMAC, nextHop, want))
}

// testICMPHairpin: an error about a hairpin connection reaches the sender as
// if from the host's published port.
func testICMPHairpin(t *testing.T, l *natLab) {
	f := flow{proto: protoUDP, src: a1.Addr, sport: 40060, dst: hostAddr, dport: 5353, payload: []byte("dns")}
	delivered := f.with(a1.Addr, 40060, b1.Addr, 53)
	l.expect(t, hookFromEndpoint, a1.HostIfindex, fromSandbox(a1, f), tcActRedirect, ReasonHairpin)
	in := icmpErrorFlow(b1.Addr, a1.Addr, 3, 3, delivered, 0)
	want := icmpErrorFlow(hostAddr, a1.Addr, 3, 3, f, 0)
	l.expectOut(t, hookFromEndpoint, b1.HostIfindex, ethIPv4(netB.RouterMAC, b1.MAC, in), tcActRedirect, ReasonDNATReply,
		ethIPv4(a1.MAC, netA.RouterMAC, want))
}

// testICMPUnknownConnection: an error about no known connection is the
// host's, and an endpoint's own cannot be masqueraded.
func testICMPUnknownConnection(t *testing.T, l *natLab) {
	stranger := flow{proto: protoUDP, src: hostAddr, sport: 33333, dst: outside, dport: 53}
	in := ethIPv4(uplinkMAC, nextHop, icmpErrorFlow(router, hostAddr, 3, 4, stranger, 0))
	l.expectOut(t, hookFromUplink, uplinkIfindex, in, tcActOK, ReasonNotNAT, nil)
	l.expectOut(t, hookXDP, 0, in, xdpPass, ReasonNotNAT, nil)
	// An endpoint's own error about something untranslated cannot
	// be masqueraded.
	own := ethIPv4(nextHop, uplinkMAC, icmpErrorFlow(a1.Addr, outside, 3, 3, stranger.with(outside, 53, a1.Addr, 1234), 0))
	l.expect(t, hookToUplink, uplinkIfindex, own, tcActShot, ReasonNATUnsupported)
}

// ethIPv4 is the IPv4 packet ip in an Ethernet frame from src to dst.
func ethIPv4(dst, src []byte, ip []byte) []byte { return ether(dst, src, etherTypeIPv4, ip) }
