package kernel

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/datapathtest"
	fabricns "github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// counter is the datapath's counter for direction/verdict/reason.
func (l *lab) counter(dir, verdict, reason string) uint64 {
	l.t.Helper()
	return datapathtest.Counter(l.t, l.dp, dir, verdict, reason)
}

// waitCounter waits (up to 3 s) for the counter to pass from.
func (l *lab) waitCounter(dir, verdict, reason string, from uint64) bool {
	l.t.Helper()
	return datapathtest.WaitCounter(l.t, l.dp, dir, verdict, reason, from)
}

// fabricGuard are fabric's own host ports as the agent has them guarded:
// gossip (TCP and UDP), the tunnel and metrics.
var fabricGuard = []datapath.HostPort{{Proto: "tcp", Port: 7946}, {Proto: "udp", Port: 7946}, {Proto: "udp", Port: 4789}, {Proto: "tcp", Port: 9100}}

// TestGuardPortsFromSandboxes: a sandbox reaches the host's other ports
// through its gateway, but not fabric's own (gossip, tunnel, metrics):
// those are dropped in the input chain and counted.
func TestGuardPortsFromSandboxes(t *testing.T) {
	t.Parallel()
	l := bareLab(t)
	l.dp = l.open(Options{GuardPorts: fabricGuard})
	n := l.bridgeNetwork("gd", "br-gd", "10.91.1.0/24", false)
	sbPath := l.join(n, "epg", "vhg", 2).path

	serveTCP(t, l.hostPath, ":7946")
	serveUDP(t, l.hostPath, ":7946")
	serveUDP(t, l.hostPath, ":4789")
	serveTCP(t, l.hostPath, ":7947")
	gw := n.Gateway.String()
	if got := mustDial(t, sbPath, "tcp4", gw+":7947"); got != "10.91.1.2" {
		t.Errorf("host's other port saw %s", got)
	}
	for _, c := range []struct{ network, addr string }{
		{"tcp4", gw + ":7946"}, {"udp4", gw + ":7946"}, {"udp4", gw + ":4789"},
	} {
		before := l.counter("from-endpoint", "drop", "host-port")
		if got, err := dial(sbPath, c.network, c.addr); err == nil {
			t.Errorf("sandbox reached the host's %s %s (answer %q)", c.network, c.addr, got)
		}
		if !l.waitCounter("from-endpoint", "drop", "host-port", before) {
			t.Errorf("%s %s: drop not counted", c.network, c.addr)
		}
	}

	if st := l.dp.Status(ctx); !strings.Contains(strings.Join(st.Details, "\n"), "host ports closed to sandboxes: tcp/7946 udp/7946 udp/4789 tcp/9100") {
		t.Errorf("status does not list the guarded ports: %q", st.Details)
	}
	if _, err := New(nil, Options{NetNSPath: l.hostPath, GuardPorts: []datapath.HostPort{{Proto: "sctp", Port: 1}}}); err == nil {
		t.Error("New accepted a guarded sctp port")
	}
}

// TestTunnelAcceptsOnlyOwners: VXLAN to a host is accepted from a member
// only for the addresses it holds; another inner source from a member, or
// anything from an address that is no member's, is dropped and counted.
func TestTunnelAcceptsOnlyOwners(t *testing.T) {
	t.Parallel()
	const port = 4799
	a, b, aIP, bIP := overlayHosts(t, "10.201.9", port)
	n := overlayNetwork("ovg", "br-g", "10.90.9.0/24", 4343)
	ensureOn(n, a, b)
	ja, jb := a.join(n, "epa", "vga", 2), b.join(n, "epb", "vgb", 3)
	sa, pa, epa, epb := ja.name, ja.path, ja.ep, jb.ep
	a.setRemotes(n, remoteOf(epb, bIP))
	b.setRemotes(n, remoteOf(epa, aIP))
	mustPing(t, sa, epb.Addr.Addr().String())

	// A stranger on the underlay: another address on B's side.
	stranger := netip.MustParseAddr("10.201.9.3")
	if err := b.hostNL.AddrAdd(b.link("ul0"), mustAddr(stranger.String()+"/24")); err != nil {
		t.Fatal(err)
	}
	send := func(from netip.Addr, innerSrc netip.Addr) {
		t.Helper()
		sendVXLAN(t, b.hostPath, from, netip.AddrPortFrom(aIP, port), netnstest.VXLANFrame(n.VNI, epa.MAC, innerSrc, epa.Addr.Addr()))
	}
	for _, c := range []struct {
		name     string
		from     netip.Addr
		innerSrc netip.Addr
	}{
		{"member, address it does not hold", bIP, netip.MustParseAddr("10.90.9.50")},
		{"member, A's own endpoint's address", bIP, epa.Addr.Addr()},
		{"non-member, B's endpoint's address", stranger, epb.Addr.Addr()},
	} {
		before := a.counter("from-tunnel", "drop", "tunnel-source")
		send(c.from, c.innerSrc)
		if !a.waitCounter("from-tunnel", "drop", "tunnel-source", before) {
			t.Errorf("%s: not dropped as tunnel-source", c.name)
		}
	}
	// The real sender still gets through, and is not counted.
	before := a.counter("from-tunnel", "drop", "tunnel-source")
	mustPing(t, sa, epb.Addr.Addr().String())
	if got := a.counter("from-tunnel", "drop", "tunnel-source"); got != before {
		t.Errorf("legitimate traffic counted as tunnel-source drops (%d -> %d)", before, got)
	}

	// A sandbox's own VXLAN to B, masqueraded, would come from A: it
	// stops at A.
	before = a.counter("from-endpoint", "drop", "host-port")
	sendVXLAN(t, pa, netip.Addr{}, netip.AddrPortFrom(bIP, port), netnstest.VXLANFrame(n.VNI, epb.MAC, epa.Addr.Addr(), epb.Addr.Addr()))
	if !a.waitCounter("from-endpoint", "drop", "host-port", before) {
		t.Error("sandbox's VXLAN to another node: not dropped as host-port")
	}

	// A restarted datapath adopts the peers set: a table rebuilt before
	// the remotes are set again (another network ensured) still lets B in.
	if err := a.dp.Close(); err != nil {
		t.Fatal(err)
	}
	a.dp = a.open(Options{Tunnel: datapath.Tunnel{Local: aIP, Port: port}})
	a.ensureNetwork(network("other", "br-go", "10.91.9.0/24", false))
	mustPing(t, sa, epb.Addr.Addr().String())

	// Removing B's endpoint from A's remotes closes the door for it too.
	a.setRemotes(n)
	before = a.counter("from-tunnel", "drop", "tunnel-source")
	send(bIP, epb.Addr.Addr())
	if !a.waitCounter("from-tunnel", "drop", "tunnel-source", before) {
		t.Error("former remote's traffic still accepted")
	}
}

// sendVXLAN sends frame in one UDP datagram to to, from inside the
// namespace at nsPath, from the address from (any if zero).
func sendVXLAN(t *testing.T, nsPath string, from netip.Addr, to netip.AddrPort, frame []byte) {
	t.Helper()
	var laddr *net.UDPAddr
	if from.IsValid() {
		laddr = &net.UDPAddr{IP: from.AsSlice()}
	}
	err := fabricns.Do(nsPath, func() error {
		c, err := net.DialUDP("udp4", laddr, net.UDPAddrFromAddrPort(to))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(frame)
		return err
	})
	if err != nil {
		t.Fatalf("send VXLAN from %s to %s: %v", from, to, err)
	}
}
