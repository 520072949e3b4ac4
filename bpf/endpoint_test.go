//go:build linux

package bpf

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
)

// A behaviour case: one packet in, one verdict, one counted reason, and the
// packet as it must come out (nil: unchanged).
type behaviour struct {
	name    string
	ifindex int
	pkt     []byte
	ret     uint32
	reason  Reason
	out     []byte
}

func checkBehaviours(t *testing.T, cases []behaviour) {
	t.Helper()
	o := loadFixture(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := runCounted(t, o, c.ifindex, c.pkt, c.ret, c.reason)
			want := c.out
			if want == nil {
				want = c.pkt
			}
			if !bytes.Equal(out, want) {
				t.Errorf("packet out\n got %x\nwant %x", out, want)
			}
		})
	}
}

// arpFrom is an ARP frame as the endpoint's sandbox sends it.
func arpFrom(ep Endpoint, m arpMsg) []byte {
	dst := broadcast
	if m.op == arpReply {
		dst = mac("02:aa:bb:cc:dd:ee") // the host veth that asked
	}
	return ether(dst, ep.MAC, etherTypeARP, m.marshal())
}

func arpRequestFrom(ep Endpoint, target netip.Addr) []byte {
	return arpFrom(ep, arp(arpRequest, ep.MAC, ep.Addr, zeroMAC, target))
}

// arpAnswer is the reply the program must build for ep asking for target.
func arpAnswer(ep Endpoint, n Network, target netip.Addr) []byte {
	return ether(ep.MAC, n.RouterMAC, etherTypeARP, arp(arpReply, n.RouterMAC, target, ep.MAC, ep.Addr).marshal())
}

func TestARP(t *testing.T) {
	withSHA := func(m arpMsg, sha net.HardwareAddr) arpMsg { m.sha = sha; return m }
	req := func(tpa netip.Addr) arpMsg { return arp(arpRequest, a1.MAC, a1.Addr, zeroMAC, tpa) }
	malformed := func(f func(*arpMsg)) []byte {
		m := req(netA.Gateway)
		f(&m)
		return arpFrom(a1, m)
	}
	checkBehaviours(t, []behaviour{
		{name: "request for gateway is answered", ifindex: a1.HostIfindex,
			pkt: arpRequestFrom(a1, netA.Gateway), ret: tcActRedirect, reason: ReasonARPReply,
			out: arpAnswer(a1, netA, netA.Gateway)},
		{name: "request for peer in subnet is answered", ifindex: a1.HostIfindex,
			pkt: arpRequestFrom(a1, a2.Addr), ret: tcActRedirect, reason: ReasonARPReply,
			out: arpAnswer(a1, netA, a2.Addr)},
		{name: "request for unused address in subnet is answered", ifindex: a1.HostIfindex,
			pkt: arpRequestFrom(a1, ip("10.1.0.200")), ret: tcActRedirect, reason: ReasonARPReply,
			out: arpAnswer(a1, netA, ip("10.1.0.200"))},
		{name: "request on network B gets B's router MAC", ifindex: b1.HostIfindex,
			pkt: arpRequestFrom(b1, netB.Gateway), ret: tcActRedirect, reason: ReasonARPReply,
			out: arpAnswer(b1, netB, netB.Gateway)},
		{name: "padded request keeps its padding", ifindex: a1.HostIfindex,
			pkt: pad(arpRequestFrom(a1, netA.Gateway)), ret: tcActRedirect, reason: ReasonARPReply,
			out: pad(arpAnswer(a1, netA, netA.Gateway))},
		{name: "request for other network's endpoint is ignored", ifindex: a1.HostIfindex,
			pkt: arpRequestFrom(a1, b1.Addr), ret: tcActShot, reason: ReasonARPIgnored},
		{name: "request off subnet is ignored", ifindex: a1.HostIfindex,
			pkt: arpRequestFrom(a1, ip("8.8.8.8")), ret: tcActShot, reason: ReasonARPIgnored},
		{name: "probe is ignored", ifindex: a1.HostIfindex,
			pkt: arpFrom(a1, arp(arpRequest, a1.MAC, ip("0.0.0.0"), zeroMAC, a1.Addr)), ret: tcActShot, reason: ReasonARPIgnored},
		{name: "announcement is ignored", ifindex: a1.HostIfindex,
			pkt: arpRequestFrom(a1, a1.Addr), ret: tcActShot, reason: ReasonARPIgnored},
		{name: "other opcode is ignored", ifindex: a1.HostIfindex,
			pkt: arpFrom(a1, arp(3, a1.MAC, a1.Addr, zeroMAC, netA.Gateway)), ret: tcActShot, reason: ReasonARPIgnored},
		{name: "spoofed sender IP", ifindex: a1.HostIfindex,
			pkt: arpFrom(a1, arp(arpRequest, a1.MAC, a2.Addr, zeroMAC, netA.Gateway)), ret: tcActShot, reason: ReasonSpoofedIP},
		{name: "spoofed sender MAC", ifindex: a1.HostIfindex,
			pkt: arpFrom(a1, withSHA(req(netA.Gateway), a2.MAC)), ret: tcActShot, reason: ReasonSpoofedMAC},
		{name: "spoofed ethernet source", ifindex: a1.HostIfindex,
			pkt: ether(broadcast, a2.MAC, etherTypeARP, req(netA.Gateway).marshal()), ret: tcActShot, reason: ReasonSpoofedMAC},
		{name: "reply to the host passes", ifindex: a1.HostIfindex,
			pkt: arpFrom(a1, arp(arpReply, a1.MAC, a1.Addr, mac("02:aa:bb:cc:dd:ee"), ip("192.0.2.1"))), ret: tcActOK, reason: ReasonARPToHost},
		{name: "spoofed reply", ifindex: a1.HostIfindex,
			pkt: arpFrom(a1, arp(arpReply, a1.MAC, a2.Addr, mac("02:aa:bb:cc:dd:ee"), ip("192.0.2.1"))), ret: tcActShot, reason: ReasonSpoofedIP},
		{name: "non-Ethernet hardware type", ifindex: a1.HostIfindex,
			pkt: malformed(func(m *arpMsg) { m.htype = 6 }), ret: tcActShot, reason: ReasonMalformed},
		{name: "non-IPv4 protocol type", ifindex: a1.HostIfindex,
			pkt: malformed(func(m *arpMsg) { m.ptype = etherTypeIPv6 }), ret: tcActShot, reason: ReasonMalformed},
		{name: "bad address lengths", ifindex: a1.HostIfindex,
			pkt: malformed(func(m *arpMsg) { m.hlen, m.plen = 8, 4 }), ret: tcActShot, reason: ReasonMalformed},
	})
}

// ipFrom is an IPv4 frame as the endpoint's sandbox sends it to its router.
func ipFrom(ep Endpoint, n Network, h ipv4Hdr, l4 []byte) []byte {
	return ether(n.RouterMAC, ep.MAC, etherTypeIPv4, h.marshal(l4))
}

// forwarded is pkt as the program must hand it to dst: only the MACs change.
func forwarded(pkt []byte, dst Endpoint, n Network) []byte {
	out := bytes.Clone(pkt)
	copy(out[0:6], dst.MAC)
	copy(out[6:12], n.RouterMAC)
	return out
}

func TestIPv4(t *testing.T) {
	ping := func(src, dst Endpoint, n Network) []byte {
		return ipFrom(src, n, ipv4Hdr{src: src.Addr, dst: dst.Addr, proto: protoICMP}, icmpEcho(1, 1, []byte("fabric")))
	}
	toAddr := func(src Endpoint, dst netip.Addr) []byte {
		return ipFrom(src, netA, ipv4Hdr{src: src.Addr, dst: dst, proto: protoUDP}, udp(src.Addr, dst, 5000, 53, []byte("q")))
	}
	tcp := ipFrom(a1, netA, ipv4Hdr{src: a1.Addr, dst: a2.Addr, proto: protoTCP, flags: 0x4000}, tcpSYN(a1.Addr, a2.Addr, 40000, 80, 1))
	udpA := ipFrom(a1, netA, ipv4Hdr{src: a1.Addr, dst: a2.Addr, proto: protoUDP, ttl: 1}, udp(a1.Addr, a2.Addr, 1, 2, make([]byte, 1400)))
	spoofIP := ipFrom(a1, netA, ipv4Hdr{src: ip("10.1.0.99"), dst: a2.Addr, proto: protoICMP}, icmpEcho(1, 1, nil))
	stealIP := ipFrom(a1, netA, ipv4Hdr{src: a2.Addr, dst: ip("8.8.8.8"), proto: protoICMP}, icmpEcho(1, 1, nil))
	spoofMAC := ether(netA.RouterMAC, mac("02:00:de:ad:be:ef"), etherTypeIPv4,
		ipv4Hdr{src: a1.Addr, dst: a2.Addr, proto: protoICMP}.marshal(icmpEcho(1, 1, nil)))
	bcast := ether(broadcast, a1.MAC, etherTypeIPv4,
		ipv4Hdr{src: a1.Addr, dst: ip("255.255.255.255"), proto: protoUDP}.marshal(udp(a1.Addr, ip("255.255.255.255"), 68, 67, nil)))

	checkBehaviours(t, []behaviour{
		{name: "ICMP to same-network endpoint is forwarded", ifindex: a1.HostIfindex,
			pkt: ping(a1, a2, netA), ret: tcActRedirect, reason: ReasonForward, out: forwarded(ping(a1, a2, netA), a2, netA)},
		{name: "and back", ifindex: a2.HostIfindex,
			pkt: ping(a2, a1, netA), ret: tcActRedirect, reason: ReasonForward, out: forwarded(ping(a2, a1, netA), a1, netA)},
		{name: "TCP to same-network endpoint is forwarded", ifindex: a1.HostIfindex,
			pkt: tcp, ret: tcActRedirect, reason: ReasonForward, out: forwarded(tcp, a2, netA)},
		{name: "TTL 1 is forwarded untouched, as on a bridge", ifindex: a1.HostIfindex,
			pkt: udpA, ret: tcActRedirect, reason: ReasonForward, out: forwarded(udpA, a2, netA)},
		{name: "multi-homed sandbox reaches B through its B endpoint", ifindex: mB.HostIfindex,
			pkt: ping(mB, b1, netB), ret: tcActRedirect, reason: ReasonForward, out: forwarded(ping(mB, b1, netB), b1, netB)},
		{name: "to its own address goes back to itself", ifindex: a1.HostIfindex,
			pkt: ping(a1, a1, netA), ret: tcActRedirect, reason: ReasonForward, out: forwarded(ping(a1, a1, netA), a1, netA)},
		{name: "to other network's endpoint is dropped", ifindex: a1.HostIfindex,
			pkt: ping(a1, b1, netA), ret: tcActShot, reason: ReasonCrossNetwork},
		{name: "from B to A is dropped", ifindex: b1.HostIfindex,
			pkt: ping(b1, a1, netB), ret: tcActShot, reason: ReasonCrossNetwork},
		{name: "multi-homed sandbox through the wrong endpoint is dropped", ifindex: mA.HostIfindex,
			pkt: ping(mA, b1, netA), ret: tcActShot, reason: ReasonCrossNetwork},
		{name: "to the gateway goes to the host", ifindex: a1.HostIfindex,
			pkt: toAddr(a1, netA.Gateway), ret: tcActOK, reason: ReasonToHost},
		{name: "to a remote address goes to the host", ifindex: a1.HostIfindex,
			pkt: toAddr(a1, ip("8.8.8.8")), ret: tcActOK, reason: ReasonToHost},
		{name: "to an unused address of the subnet goes to the host", ifindex: a1.HostIfindex,
			pkt: toAddr(a1, ip("10.1.0.200")), ret: tcActOK, reason: ReasonToHost},
		{name: "broadcast goes to the host", ifindex: a1.HostIfindex,
			pkt: bcast, ret: tcActOK, reason: ReasonToHost},
		{name: "spoofed source IP", ifindex: a1.HostIfindex,
			pkt: spoofIP, ret: tcActShot, reason: ReasonSpoofedIP},
		{name: "another endpoint's source IP", ifindex: a1.HostIfindex,
			pkt: stealIP, ret: tcActShot, reason: ReasonSpoofedIP},
		{name: "spoofed source MAC", ifindex: a1.HostIfindex,
			pkt: spoofMAC, ret: tcActShot, reason: ReasonSpoofedMAC},
		{name: "unknown ingress ifindex", ifindex: 999,
			pkt: ping(a1, a2, netA), ret: tcActShot, reason: ReasonNoEndpoint},
		{name: "no ingress ifindex at all", ifindex: 0,
			pkt: ping(a1, a2, netA), ret: tcActShot, reason: ReasonNoEndpoint},
	})
}

func TestIPv4OptionsAndFragments(t *testing.T) {
	routerAlert := []byte{0x94, 0x04, 0x00, 0x00}
	maxOptions := bytes.Repeat([]byte{0x01}, 40) // 40 NOPs: IHL 15
	udpTo := func(h ipv4Hdr, dst netip.Addr) []byte {
		h.src, h.dst, h.proto = a1.Addr, dst, protoUDP
		return ipFrom(a1, netA, h, udp(a1.Addr, dst, 1, 2, []byte("payload!")))
	}
	setIHL := func(ihl byte) func([]byte) { return func(h []byte) { h[0] = h[0]&0xf0 | ihl } }
	plain := udpTo(ipv4Hdr{}, a2.Addr)
	withAlert := udpTo(ipv4Hdr{options: routerAlert}, a2.Addr)
	withMax := udpTo(ipv4Hdr{options: maxOptions}, a2.Addr)
	firstFrag := udpTo(ipv4Hdr{id: 7, flags: 0x2000}, a2.Addr)
	laterFrag := udpTo(ipv4Hdr{id: 7, fragOff: 185}, a2.Addr)
	padded := pad(ipFrom(a1, netA, ipv4Hdr{src: a1.Addr, dst: a2.Addr, proto: protoUDP}, udp(a1.Addr, a2.Addr, 1, 2, nil)))

	cases := []behaviour{
		{name: "router alert option is forwarded", pkt: withAlert,
			ret: tcActRedirect, reason: ReasonForward, out: forwarded(withAlert, a2, netA)},
		{name: "IHL 15 is forwarded", pkt: withMax,
			ret: tcActRedirect, reason: ReasonForward, out: forwarded(withMax, a2, netA)},
		{name: "options do not bypass isolation", pkt: udpTo(ipv4Hdr{options: routerAlert}, b1.Addr),
			ret: tcActShot, reason: ReasonCrossNetwork},
		{name: "options do not bypass anti-spoofing", pkt: editIPv4(withAlert, func(h []byte) { h[15] = 99 }),
			ret: tcActShot, reason: ReasonSpoofedIP},
		{name: "first fragment is forwarded", pkt: firstFrag,
			ret: tcActRedirect, reason: ReasonForward, out: forwarded(firstFrag, a2, netA)},
		{name: "later fragment is forwarded", pkt: laterFrag,
			ret: tcActRedirect, reason: ReasonForward, out: forwarded(laterFrag, a2, netA)},
		{name: "fragment to other network is dropped", pkt: udpTo(ipv4Hdr{id: 7, flags: 0x2000, fragOff: 1}, b1.Addr),
			ret: tcActShot, reason: ReasonCrossNetwork},
		{name: "fragment to elsewhere goes to the host", pkt: udpTo(ipv4Hdr{id: 7, fragOff: 3}, ip("8.8.8.8")),
			ret: tcActOK, reason: ReasonToHost},
		{name: "IHL 0", pkt: editIPv4(plain, setIHL(0)), ret: tcActShot, reason: ReasonMalformed},
		{name: "IHL 4", pkt: editIPv4(plain, setIHL(4)), ret: tcActShot, reason: ReasonMalformed},
		{name: "IHL beyond total length", pkt: editIPv4(plain, setIHL(15)), ret: tcActShot, reason: ReasonMalformed},
		{name: "options cut off", pkt: withMax[:14+40], ret: tcActShot, reason: ReasonMalformed},
		{name: "version 6 in an IPv4 frame", pkt: editIPv4(plain, func(h []byte) { h[0] = 6<<4 | 5 }),
			ret: tcActShot, reason: ReasonMalformed},
		{name: "total length beyond frame", pkt: plain[:14+20+4], ret: tcActShot, reason: ReasonMalformed},
		{name: "total length below header", pkt: editIPv4(plain, func(h []byte) { h[2], h[3] = 0, 19 }),
			ret: tcActShot, reason: ReasonMalformed},
		{name: "Ethernet padding after the IPv4 packet is fine", pkt: padded,
			ret: tcActRedirect, reason: ReasonForward, out: forwarded(padded, a2, netA)},
	}
	for i := range cases {
		cases[i].ifindex = a1.HostIfindex
	}
	checkBehaviours(t, cases)
}
