//go:build linux

package bpf

import (
	"bytes"
	"errors"
	"maps"
	"testing"
)

// The overlay fixture: overlay network O (VNI 42) with local endpoints o1
// and o2 and a remote endpoint on node 192.0.2.20, beside the bridge
// fixture's networks A and B.
var (
	netO    = Network{ID: 3, Subnet: pfx("10.3.0.0/24"), Gateway: ip("10.3.0.1"), RouterMAC: mac("02:fa:00:00:00:03"), VNI: 42}
	o1      = Endpoint{HostIfindex: 301, Addr: ip("10.3.0.2"), MAC: mac("02:00:0a:03:00:02"), Network: 3}
	o2      = Endpoint{HostIfindex: 302, Addr: ip("10.3.0.3"), MAC: mac("02:00:0a:03:00:03"), Network: 3}
	remote1 = Remote{Network: 3, Addr: ip("10.3.0.9"), MAC: mac("02:00:0a:03:00:09"), Node: ip("192.0.2.20")}

	tunnelIfindex = 77
)

func loadOverlayFixture(tb testing.TB, tunnel int) *Objects {
	tb.Helper()
	o := loadFixture(tb)
	if err := o.PutNetwork(netO); err != nil {
		tb.Fatal(err)
	}
	for _, ep := range []Endpoint{o1, o2} {
		if err := o.PutEndpoint(ep); err != nil {
			tb.Fatal(err)
		}
	}
	if err := o.PutRemote(remote1); err != nil {
		tb.Fatal(err)
	}
	if err := o.SetHostConfig(HostConfig{NATPortMin: 40000, NATPortMax: 40999, TunnelIfindex: tunnel, TunnelLocal: ip("192.0.2.10")}); err != nil {
		tb.Fatal(err)
	}
	return o
}

func TestToTunnel(t *testing.T) {
	toAddr := func(src Endpoint, n Network, dst Remote) []byte {
		return ipFrom(src, n, ipv4Hdr{src: src.Addr, dst: dst.Addr, proto: protoUDP}, udp(src.Addr, dst.Addr, 5000, 53, []byte("q")))
	}
	toRemote := toAddr(o1, netO, remote1)
	encapped := bytes.Clone(toRemote)
	copy(encapped[0:6], remote1.MAC)
	copy(encapped[6:12], netO.RouterMAC)
	unknown := toAddr(o1, netO, Remote{Addr: ip("10.3.0.10")})
	local := toAddr(o1, netO, Remote{Addr: o2.Addr})
	bridgeFree := toAddr(a1, netA, Remote{Addr: ip("10.1.0.200")})

	o := loadOverlayFixture(t, tunnelIfindex)
	for _, c := range []behaviour{
		{name: "to a remote endpoint: redirected to the tunnel with final MACs", ifindex: o1.HostIfindex,
			pkt: toRemote, ret: tcActRedirect, reason: ReasonToTunnel, out: encapped},
		{name: "to an address nobody holds: dropped", ifindex: o1.HostIfindex,
			pkt: unknown, ret: tcActShot, reason: ReasonNoRemote},
		{name: "to a local endpoint of the overlay: forwarded as on a bridge", ifindex: o1.HostIfindex,
			pkt: local, ret: tcActRedirect, reason: ReasonForward, out: forwarded(local, o2, netO)},
		{name: "to the overlay's gateway: host", ifindex: o1.HostIfindex,
			pkt: toAddr(o1, netO, Remote{Addr: netO.Gateway}), ret: tcActOK, reason: ReasonToHost},
		{name: "outside the subnet: host (masquerade)", ifindex: o1.HostIfindex,
			pkt: toAddr(o1, netO, Remote{Addr: ip("8.8.8.8")}), ret: tcActOK, reason: ReasonToHost},
		{name: "from a bridge network to the remote's address: host, as before", ifindex: a1.HostIfindex,
			pkt: toAddr(a1, netA, remote1), ret: tcActOK, reason: ReasonToHost},
		{name: "bridge network's free address: host, unaffected", ifindex: a1.HostIfindex,
			pkt: bridgeFree, ret: tcActOK, reason: ReasonToHost},
		{name: "from the overlay to a bridge network's endpoint: isolated", ifindex: o1.HostIfindex,
			pkt: toAddr(o1, netO, Remote{Addr: a2.Addr}), ret: tcActShot, reason: ReasonCrossNetwork},
		{name: "ARP for a remote endpoint: answered with the router MAC", ifindex: o1.HostIfindex,
			pkt: arpRequestFrom(o1, remote1.Addr), ret: tcActRedirect, reason: ReasonARPReply, out: arpAnswer(o1, netO, remote1.Addr)},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := runCounted(t, o, c.ifindex, c.pkt, c.ret, c.reason)
			want := c.out
			if want == nil {
				want = c.pkt
			}
			if !bytes.Equal(out[:len(want)], want) {
				t.Errorf("packet out\n got %x\nwant %x", out[:len(want)], want)
			}
		})
	}

	t.Run("a remote of another overlay network is not reached", func(t *testing.T) {
		netP := Network{ID: 4, Subnet: pfx("10.4.0.0/24"), Gateway: ip("10.4.0.1"), RouterMAC: mac("02:fa:00:00:00:04"), VNI: 43}
		if err := o.PutNetwork(netP); err != nil {
			t.Fatal(err)
		}
		// The same address under network P only.
		if err := o.PutRemote(Remote{Network: 4, Addr: ip("10.4.0.9"), MAC: remote1.MAC, Node: remote1.Node}); err != nil {
			t.Fatal(err)
		}
		runCounted(t, o, o1.HostIfindex, toAddr(o1, netO, Remote{Addr: ip("10.4.0.9")}), tcActOK, ReasonToHost)
	})

	t.Run("without a tunnel device: dropped", func(t *testing.T) {
		o := loadOverlayFixture(t, 0)
		runCounted(t, o, o1.HostIfindex, toRemote, tcActShot, ReasonNoTunnel)
	})
}

func TestPutRemoteRejects(t *testing.T) {
	o := loadOverlayFixture(t, tunnelIfindex)
	for _, c := range []struct {
		name string
		r    Remote
	}{
		{"bridge network", Remote{Network: netA.ID, Addr: ip("10.1.0.9"), MAC: remote1.MAC, Node: remote1.Node}},
		{"unknown network", Remote{Network: 99, Addr: ip("10.3.0.9"), MAC: remote1.MAC, Node: remote1.Node}},
		{"outside the subnet", Remote{Network: netO.ID, Addr: ip("10.9.0.9"), MAC: remote1.MAC, Node: remote1.Node}},
		{"the gateway", Remote{Network: netO.ID, Addr: netO.Gateway, MAC: remote1.MAC, Node: remote1.Node}},
		{"short MAC", Remote{Network: netO.ID, Addr: ip("10.3.0.9"), MAC: remote1.MAC[:4], Node: remote1.Node}},
		{"multicast MAC", Remote{Network: netO.ID, Addr: ip("10.3.0.9"), MAC: mac("01:00:5e:00:00:01"), Node: remote1.Node}},
		{"no node", Remote{Network: netO.ID, Addr: ip("10.3.0.9"), MAC: remote1.MAC}},
		{"IPv6 node", Remote{Network: netO.ID, Addr: ip("10.3.0.9"), MAC: remote1.MAC, Node: ip("2001:db8::1")}},
	} {
		if err := o.PutRemote(c.r); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err %v, want ErrInvalid", c.name, err)
		}
	}
	got, err := o.Remotes()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Addr != remote1.Addr || got[0].Node != remote1.Node || got[0].MAC.String() != remote1.MAC.String() {
		t.Errorf("remotes %+v, want only %+v", got, remote1)
	}
	if err := o.DeleteRemote(remote1.Network, remote1.Addr); err != nil {
		t.Fatal(err)
	}
	if err := o.DeleteRemote(remote1.Network, remote1.Addr); err != nil {
		t.Errorf("deleting a missing remote: %v", err)
	}
}

// TestFromTunnelWithoutMetadata: BPF_PROG_TEST_RUN cannot attach tunnel
// metadata to a packet, so bpf_skb_get_tunnel_key fails and the program
// must drop, counted; the delivery and its checks (VNI, destination,
// inner source) are covered in datapath/ebpf's two-host test, with
// crafted VXLAN packets through a real device.
func TestFromTunnelWithoutMetadata(t *testing.T) {
	o := loadOverlayFixture(t, tunnelIfindex)
	tun := mustLoadOn(t, o, "tunnel program", LoadTunnel)
	pkt := ether(o1.MAC, netO.RouterMAC, etherTypeIPv4,
		ipv4Hdr{src: remote1.Addr, dst: o1.Addr, proto: protoUDP}.marshal(udp(remote1.Addr, o1.Addr, 53, 5000, []byte("a"))))
	before := readCounters(t, o)
	ret, _ := mustRun(t, tun.FromTunnel(), 0, pkt)
	if ret != tcActShot {
		t.Errorf("verdict %d, want drop", ret)
	}
	want := map[CounterKey]Counter{{DirFromTunnel, VerdictDrop, ReasonNoTunnel}: {1, uint64(len(pkt))}}
	if d := counterDelta(before, readCounters(t, o)); !maps.Equal(d, want) {
		t.Errorf("counters moved by %v, want %v", d, want)
	}
}
