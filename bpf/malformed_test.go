//go:build linux

package bpf

import (
	"errors"
	"fmt"
	"maps"
	"testing"

	"golang.org/x/sys/unix"
)

// TestTruncated cuts a valid ARP request and a valid IPv4 packet at every
// length up to 60 bytes. BPF_PROG_TEST_RUN itself refuses (EINVAL, before
// the program runs, so nothing may be counted) frames shorter than an
// Ethernet header, and on 6.18 also IPv4 frames shorter than an IPv4 header:
// those lengths reach the program only from a real device (see the
// namespace test). Where the kernel does run the program, the verdict must
// be exact.
func TestTruncated(t *testing.T) {
	o := loadFixture(t)
	arpReq := pad(arpRequestFrom(a1, netA.Gateway)) // 42 bytes + padding
	ipPkt := ipFrom(a1, netA, ipv4Hdr{src: a1.Addr, dst: a2.Addr, proto: protoUDP}, udp(a1.Addr, a2.Addr, 1, 2, make([]byte, 32)))
	if len(ipPkt) <= 60 {
		t.Fatalf("IPv4 packet is %d bytes; it must be cut short of its total length everywhere up to 60", len(ipPkt))
	}
	for _, tc := range []struct {
		name string
		pkt  []byte
		want func(n int) (uint32, Reason)
	}{
		{"arp", arpReq, func(n int) (uint32, Reason) {
			if n < 14+28 {
				return tcActShot, ReasonMalformed
			}
			return tcActRedirect, ReasonARPReply
		}},
		{"ipv4", ipPkt, func(int) (uint32, Reason) { return tcActShot, ReasonMalformed }},
	} {
		for n := 0; n <= 60; n++ {
			t.Run(fmt.Sprintf("%s/%d", tc.name, n), func(t *testing.T) {
				pkt := tc.pkt[:n]
				mayRefuse := n < 14 || tc.name == "ipv4" && n < 14+20
				before := readCounters(t, o)
				ret, _, err := run(o.FromEndpoint(), a1.HostIfindex, pkt)
				delta := counterDelta(before, readCounters(t, o))
				switch {
				case n < 14 && err == nil:
					t.Fatalf("kernel ran the program on a %d-byte frame (verdict %d): extend the test to check it", n, ret)
				case mayRefuse && errors.Is(err, unix.EINVAL):
					if len(delta) != 0 {
						t.Errorf("counters moved for a frame the kernel refused: %v", delta)
					}
				case err != nil:
					t.Fatalf("run: %v", err)
				default:
					wantRet, wantReason := tc.want(n)
					if ret != wantRet {
						t.Errorf("verdict %d, want %d", ret, wantRet)
					}
					want := map[CounterKey]Counter{{DirFromEndpoint, verdictOf(wantRet), wantReason}: {1, uint64(n)}}
					if !maps.Equal(delta, want) {
						t.Errorf("counters moved by %v, want %v", delta, want)
					}
				}
			})
		}
	}
}

func TestNonIP(t *testing.T) {
	ipv6 := make([]byte, 40)
	ipv6[0] = 6 << 4
	vlan := []byte{0x00, 0x64, 0x08, 0x00} // VLAN 100, then IPv4
	vlan = append(vlan, ipv4Hdr{src: a1.Addr, dst: a2.Addr, proto: protoICMP}.marshal(icmpEcho(1, 1, nil))...)
	checkBehaviours(t, []behaviour{
		// No anti-spoofing exists for IPv6 yet, so none leaves a sandbox.
		{name: "IPv6", ifindex: a1.HostIfindex, pkt: ether(mac("33:33:00:00:00:02"), a1.MAC, etherTypeIPv6, ipv6),
			ret: tcActShot, reason: ReasonUnsupportedL3},
		// An in-band tag is just another EtherType here; an out-of-band one
		// (skb->vlan_present, not settable through BPF_PROG_TEST_RUN) is
		// dropped with reason vlan.
		{name: "802.1Q in band", ifindex: a1.HostIfindex, pkt: ether(netA.RouterMAC, a1.MAC, etherTypeVLAN, vlan),
			ret: tcActShot, reason: ReasonUnsupportedL3},
		{name: "LLDP", ifindex: a1.HostIfindex, pkt: pad(ether(mac("01:80:c2:00:00:0e"), a1.MAC, 0x88cc, nil)),
			ret: tcActShot, reason: ReasonUnsupportedL3},
		{name: "bare Ethernet header", ifindex: a1.HostIfindex, pkt: ether(broadcast, a1.MAC, etherTypeARP, nil),
			ret: tcActShot, reason: ReasonMalformed},
		{name: "spoofed MAC wins over EtherType", ifindex: a1.HostIfindex, pkt: ether(broadcast, a2.MAC, etherTypeIPv6, ipv6),
			ret: tcActShot, reason: ReasonSpoofedMAC},
	})
}

// TestNoNetwork: an endpoint whose network is gone sends nothing.
func TestNoNetwork(t *testing.T) {
	o := loadFixture(t)
	if err := o.DeleteNetwork(netB.ID); err != nil {
		t.Fatal(err)
	}
	runCounted(t, o, b1.HostIfindex, arpRequestFrom(b1, netB.Gateway), tcActShot, ReasonNoNetwork)
	runCounted(t, o, b1.HostIfindex, ipFrom(b1, netB, ipv4Hdr{src: b1.Addr, dst: mB.Addr, proto: protoICMP}, icmpEcho(1, 1, nil)),
		tcActShot, ReasonNoNetwork)
	// A's endpoints are unaffected.
	runCounted(t, o, a1.HostIfindex, arpRequestFrom(a1, netA.Gateway), tcActRedirect, ReasonARPReply)
}
