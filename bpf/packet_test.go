//go:build linux

package bpf

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
)

// A tiny packet builder: just enough Ethernet, ARP, IPv4, ICMP, UDP and TCP
// to hand-craft what a sandbox sends, including what it should not send.

const (
	etherTypeIPv4 = 0x0800
	etherTypeARP  = 0x0806
	etherTypeIPv6 = 0x86dd
	etherTypeVLAN = 0x8100

	arpRequest = 1
	arpReply   = 2

	protoICMP = 1
	protoTCP  = 6
	protoUDP  = 17
)

func ether(dst, src net.HardwareAddr, typ uint16, payload []byte) []byte {
	b := make([]byte, 0, 14+len(payload))
	b = append(b, dst...)
	b = append(b, src...)
	b = binary.BigEndian.AppendUint16(b, typ)
	return append(b, payload...)
}

// arpMsg is an IPv4-over-Ethernet ARP payload; the header fields can be
// overridden to build unsupported variants.
type arpMsg struct {
	htype, ptype uint16
	hlen, plen   uint8
	op           uint16
	sha          net.HardwareAddr
	spa          netip.Addr
	tha          net.HardwareAddr
	tpa          netip.Addr
}

func arp(op uint16, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) arpMsg {
	return arpMsg{htype: 1, ptype: etherTypeIPv4, hlen: 6, plen: 4, op: op, sha: sha, spa: spa, tha: tha, tpa: tpa}
}

func (a arpMsg) marshal() []byte {
	b := binary.BigEndian.AppendUint16(nil, a.htype)
	b = binary.BigEndian.AppendUint16(b, a.ptype)
	b = append(b, a.hlen, a.plen)
	b = binary.BigEndian.AppendUint16(b, a.op)
	b = append(b, a.sha...)
	b = append(b, a.spa.AsSlice()...)
	b = append(b, a.tha...)
	return append(b, a.tpa.AsSlice()...)
}

// ipv4Hdr builds an IPv4 header; lying headers are made by editing the
// marshalled bytes (see editIPv4).
type ipv4Hdr struct {
	src, dst netip.Addr
	proto    uint8
	ttl      uint8
	id       uint16
	flags    uint16 // the 3 flag bits in place: 0x2000 = MF, 0x4000 = DF
	fragOff  uint16 // in 8-byte units
	options  []byte // padded by the caller to a multiple of 4
}

func (h ipv4Hdr) marshal(payload []byte) []byte {
	hlen := 20 + len(h.options)
	ttl := h.ttl
	if ttl == 0 {
		ttl = 64
	}
	b := make([]byte, hlen, hlen+len(payload))
	b[0] = 4<<4 | uint8(hlen/4)
	binary.BigEndian.PutUint16(b[2:], uint16(hlen+len(payload)))
	binary.BigEndian.PutUint16(b[4:], h.id)
	binary.BigEndian.PutUint16(b[6:], h.flags|h.fragOff&0x1fff)
	b[8] = ttl
	b[9] = h.proto
	copy(b[12:], h.src.AsSlice())
	copy(b[16:], h.dst.AsSlice())
	copy(b[20:], h.options)
	binary.BigEndian.PutUint16(b[10:], checksum(b, 0))
	return append(b, payload...)
}

// editIPv4 returns a copy of an Ethernet+IPv4 frame with the IPv4 header
// changed by edit and its checksum recomputed over the original length.
func editIPv4(frame []byte, edit func(h []byte)) []byte {
	out := bytes.Clone(frame)
	h := out[14:]
	hlen := int(h[0]&0xf) * 4
	edit(h)
	h[10], h[11] = 0, 0
	binary.BigEndian.PutUint16(h[10:], checksum(h[:hlen], 0))
	return out
}

// checksum is the Internet checksum (RFC 1071) of b, starting from sum.
func checksum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

func pseudoSum(src, dst netip.Addr, proto uint8, length int) uint32 {
	var sum uint32
	for _, a := range [][4]byte{src.As4(), dst.As4()} {
		sum += uint32(binary.BigEndian.Uint16(a[0:])) + uint32(binary.BigEndian.Uint16(a[2:]))
	}
	return sum + uint32(proto) + uint32(length)
}

func icmpEcho(id, seq uint16, data []byte) []byte {
	b := []byte{8, 0, 0, 0}
	b = binary.BigEndian.AppendUint16(b, id)
	b = binary.BigEndian.AppendUint16(b, seq)
	b = append(b, data...)
	binary.BigEndian.PutUint16(b[2:], checksum(b, 0))
	return b
}

func udp(src, dst netip.Addr, sport, dport uint16, data []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, sport)
	b = binary.BigEndian.AppendUint16(b, dport)
	b = binary.BigEndian.AppendUint16(b, uint16(8+len(data)))
	b = append(b, 0, 0)
	b = append(b, data...)
	binary.BigEndian.PutUint16(b[6:], checksum(b, pseudoSum(src, dst, protoUDP, len(b))))
	return b
}

func tcpSYN(src, dst netip.Addr, sport, dport uint16, seq uint32) []byte {
	b := binary.BigEndian.AppendUint16(nil, sport)
	b = binary.BigEndian.AppendUint16(b, dport)
	b = binary.BigEndian.AppendUint32(b, seq)
	b = binary.BigEndian.AppendUint32(b, 0) // ack
	b = append(b, 5<<4, 0x02)               // data offset, SYN
	b = binary.BigEndian.AppendUint16(b, 64240)
	b = append(b, 0, 0, 0, 0) // checksum, urgent pointer
	binary.BigEndian.PutUint16(b[16:], checksum(b, pseudoSum(src, dst, protoTCP, len(b))))
	return b
}

// pad extends a frame to the 60-byte Ethernet minimum, as a NIC or veth
// sender may.
func pad(frame []byte) []byte {
	for len(frame) < 60 {
		frame = append(frame, 0)
	}
	return frame
}
