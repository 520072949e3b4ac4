//go:build linux

package ebpf

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/fabricnet/fabric/datapath"
	fabricns "github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// testDecapDrops sends crafted VXLAN packets from h1's underlay address to
// h2's tunnel port and checks h2's receiving program's verdicts.
func testDecapDrops(t *testing.T, l *overlayLab) {
	h1, h2 := l.h1, l.h2
	a1, a2 := h1.ep.Addr.Addr(), h2.ep.Addr.Addr()
	var conn *net.UDPConn
	err := fabricns.Do(h1.path, func() (err error) {
		conn, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: h2.local.AsSlice(), Port: labTunnelPort})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, c := range []struct {
		name     string
		vni      uint32
		src, dst netip.Addr
		verdict  string
		reason   string
	}{
		{"valid", labVNI, a1, a2, "redirect", "forward"},
		{"wrong VNI", labVNI + 1, a1, a2, "drop", "wrong-vni"},
		{"no such endpoint", labVNI, a1, netip.MustParseAddr("10.77.0.99"), "drop", "no-owner"},
		{"source outside the subnet", labVNI, netip.MustParseAddr("10.78.0.2"), a2, "drop", "spoofed-ip"},
		{"source is a local endpoint", labVNI, a2, a2, "drop", "spoofed-ip"},
		{"source is the gateway", labVNI, l.net.Gateway, a2, "drop", "spoofed-ip"},
		{"source no remote holds", labVNI, netip.MustParseAddr("10.77.0.50"), a2, "drop", "tunnel-source"},
	} {
		before := h2.counter("from-tunnel", c.verdict, c.reason)
		if _, err := conn.Write(netnstest.VXLANFrame(c.vni, h2.ep.MAC, c.src, c.dst)); err != nil {
			t.Fatalf("%s: send: %v", c.name, err)
		}
		if !h2.waitCounter("from-tunnel", c.verdict, c.reason, before) {
			t.Errorf("%s: from-tunnel/%s/%s did not move", c.name, c.verdict, c.reason)
		}
	}

	// A stranger on the underlay (an address no member has) sending what
	// h1 would send, and h1 claiming an address that lives elsewhere.
	stranger := netip.AddrFrom4([4]byte{h1.local.As4()[0], h1.local.As4()[1], h1.local.As4()[2], 3})
	netnstest.Run(t, h1.name, "ip", "addr", "add", stranger.String()+"/24", "dev", h1.underlay)
	defer netnstest.Run(t, h1.name, "ip", "addr", "del", stranger.String()+"/24", "dev", h1.underlay)
	var sconn *net.UDPConn
	err = fabricns.Do(h1.path, func() (err error) {
		sconn, err = net.DialUDP("udp4", &net.UDPAddr{IP: stranger.AsSlice()}, &net.UDPAddr{IP: h2.local.AsSlice(), Port: labTunnelPort})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sconn.Close()
	before := h2.counter("from-tunnel", "drop", "tunnel-source")
	if _, err := sconn.Write(netnstest.VXLANFrame(labVNI, h2.ep.MAC, a1, a2)); err != nil {
		t.Fatal(err)
	}
	if !h2.waitCounter("from-tunnel", "drop", "tunnel-source", before) {
		t.Error("VXLAN from a non-member underlay address: not dropped as tunnel-source")
	}
	other := datapath.Remote{Addr: netip.MustParseAddr("10.77.0.60"), MAC: net.HardwareAddr{2, 0, 0, 0, 0, 0x60}, Node: netip.MustParseAddr("198.51.100.60")}
	if err := h2.dp.SetRemotes(context.Background(), l.net, []datapath.Remote{h1.remote(), other}); err != nil {
		t.Fatal(err)
	}
	defer l.setRemotes(t)
	before = h2.counter("from-tunnel", "drop", "tunnel-source")
	if _, err := conn.Write(netnstest.VXLANFrame(labVNI, h2.ep.MAC, other.Addr, a2)); err != nil {
		t.Fatal(err)
	}
	if !h2.waitCounter("from-tunnel", "drop", "tunnel-source", before) {
		t.Error("member sending for an address another node holds: not dropped as tunnel-source")
	}
}

// testGuardPorts: from h1's sandbox, the host's gossip port (a listener
// in h1's namespace) and tunnel port are dropped, on the gateway and on
// the underlay address; another host port is reachable.
func testGuardPorts(t *testing.T, l *overlayLab) {
	h1 := l.h1
	var lns []net.Listener
	for _, port := range []int{labGossipPort, labGossipPort + 1} {
		err := fabricns.Do(h1.path, func() error {
			ln, err := net.Listen("tcp4", fmt.Sprintf(":%d", port))
			lns = append(lns, ln)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	c, err := h1.dial(l.net.Gateway, labGossipPort+1)
	if err != nil {
		t.Fatalf("sandbox to another host port: %v", err)
	}
	c.Close()
	for _, to := range []netip.Addr{l.net.Gateway, h1.local} {
		before := h1.counter("from-endpoint", "drop", "host-port")
		if c, err := h1.dial(to, labGossipPort); err == nil {
			c.Close()
			t.Errorf("sandbox reached the host's gossip port at %s", to)
		}
		if !h1.waitCounter("from-endpoint", "drop", "host-port", before) {
			t.Errorf("gossip port at %s: drop not counted", to)
		}
	}
	before := h1.counter("from-endpoint", "drop", "host-port")
	err = fabricns.Do(h1.ep.NetNSPath, func() error {
		u, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: h1.local.AsSlice(), Port: labTunnelPort})
		if err != nil {
			return err
		}
		defer u.Close()
		_, err = u.Write(netnstest.VXLANFrame(labVNI, h1.ep.MAC, l.h2.ep.Addr.Addr(), h1.ep.Addr.Addr()))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !h1.waitCounter("from-endpoint", "drop", "host-port", before) {
		t.Error("VXLAN from the sandbox to the host's tunnel port: drop not counted")
	}
	// To the other node's tunnel port: masqueraded, it would pass for h1.
	before = h1.counter("from-endpoint", "drop", "host-port")
	err = fabricns.Do(h1.ep.NetNSPath, func() error {
		u, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: l.h2.local.AsSlice(), Port: labTunnelPort})
		if err != nil {
			return err
		}
		defer u.Close()
		_, err = u.Write(netnstest.VXLANFrame(labVNI, l.h2.ep.MAC, h1.ep.Addr.Addr(), l.h2.ep.Addr.Addr()))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !h1.waitCounter("from-endpoint", "drop", "host-port", before) {
		t.Error("VXLAN from the sandbox to the other node's tunnel port: drop not counted")
	}
}
