package netnstest

import (
	"encoding/binary"
	"net"
	"net/netip"
)

// VXLANFrame is a VXLAN payload (RFC 7348: what goes after the outer UDP
// header) carrying a small UDP datagram from src to dst (port 9, discard),
// addressed to dstMAC: what tests send to a tunnel port to see what a
// receiving datapath accepts.
func VXLANFrame(vni uint32, dstMAC net.HardwareAddr, src, dst netip.Addr) []byte {
	udp := make([]byte, 8+4)
	binary.BigEndian.PutUint16(udp[0:], 5555)
	binary.BigEndian.PutUint16(udp[2:], 9)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], "test")
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
	ip[8], ip[9] = 64, 17
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	out := []byte{0x08, 0, 0, 0, byte(vni >> 16), byte(vni >> 8), byte(vni), 0}
	out = append(out, dstMAC...)
	out = append(out, 0x02, 0x00, 0x00, 0xee, 0xee, 0x01) // not a device's own MAC
	out = append(out, 0x08, 0x00)
	out = append(out, ip...)
	return append(out, udp...)
}
