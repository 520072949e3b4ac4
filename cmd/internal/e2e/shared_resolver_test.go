package e2e

import (
	"errors"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// sharedResolver is where the agent answers Docker's resolver
// (dockerplugin.DNSAddr) when started with --docker-plugin.
var sharedResolver = &net.UDPAddr{IP: net.IPv4(169, 254, 53, 53), Port: 53}

// udpIn opens a UDP socket bound to src (zero: any address, any port)
// inside the namespace at nsPath; it keeps that namespace after.
func udpIn(t *testing.T, nsPath string, src *net.UDPAddr) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := netns.Do(nsPath, func() (err error) { c, err = net.ListenUDP("udp4", src); return err }); err != nil {
		t.Fatalf("udp socket at %v in %s: %v", src, nsPath, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// askShared sends a query for name from c to the shared resolver.
func askShared(t *testing.T, c *net.UDPConn, name string, id uint16) {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	m.Id = id
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteTo(b, sharedResolver); err != nil {
		t.Fatalf("send query for %s: %v", name, err)
	}
}

// replyTo waits up to d for a reply on c; nil if none came.
func replyTo(t *testing.T, c *net.UDPConn, d time.Duration) *dns.Msg {
	t.Helper()
	buf := make([]byte, 1500)
	_ = c.SetReadDeadline(time.Now().Add(d))
	n, _, err := c.ReadFrom(buf)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	r := new(dns.Msg)
	if err := r.Unpack(buf[:n]); err != nil {
		t.Fatalf("reply: %v", err)
	}
	return r
}

func addrsOf(r *dns.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}

// TestSharedResolverTrust: the resolver fabricd runs for Docker's
// embedded DNS (169.254.53.53 on the host's lo), reached for real from
// sandboxes through the datapath. A source that is no sandbox's gets
// REFUSED; a sandbox gets its own view (names of a network it is not on
// are not answered from that network); a sandbox sending with another
// sandbox's address is dropped by the datapath's anti-spoofing before the
// resolver sees it: the reply, which would go to the real owner's
// address, never comes.
func TestSharedResolverTrust(t *testing.T) {
	onDatapaths(t, func(t *testing.T, dp string) {
		h := newHost(t, "--datapath", dp, "--docker-plugin", filepath.Join(t.TempDir(), "fabric.sock"),
			"--dns-upstreams", "127.0.0.1:9") // nothing upstream: unknown names fail fast
		na, nb := h.name("ra"), h.name("rb")
		h.mustCtl("network", "create", "--subnet", "10.37.1.0/24", na)
		h.mustCtl("network", "create", "--subnet", "10.37.2.0/24", nb)
		victim, attacker, other := h.name("v"), h.name("x"), h.name("o")
		h.mustCtl("run", "-d", "--name", victim, "--network", na, "--", "sleep", "300")
		h.mustCtl("run", "-d", "--name", attacker, "--network", na, "--", "sleep", "300")
		h.mustCtl("run", "-d", "--name", other, "--network", nb, "--", "sleep", "300")
		vIP, xIP, oIP := h.ip(victim, na), h.ip(attacker, na), h.ip(other, nb)

		// The host itself owns no sandbox address: refused (once serving).
		fromHost := udpIn(t, h.nsPath, &net.UDPAddr{})
		var r *dns.Msg
		for i := 0; i < 50 && r == nil; i++ {
			askShared(t, fromHost, attacker, uint16(i))
			r = replyTo(t, fromHost, 200*time.Millisecond)
		}
		if r == nil || r.Rcode != dns.RcodeRefused || len(r.Answer) != 0 {
			t.Fatalf("query from the host (no sandbox's address): %v, want REFUSED", r)
		}

		// The victim's own view: its network's name, not the other's.
		vConn := udpIn(t, h.sandbox(victim).NetNS, &net.UDPAddr{IP: net.ParseIP(vIP)})
		askShared(t, vConn, attacker, 1)
		if r := replyTo(t, vConn, 5*time.Second); r == nil || !slices.Equal(addrsOf(r), []string{xIP}) {
			t.Fatalf("victim asking for %s: %v, want %s", attacker, r, xIP)
		}
		askShared(t, vConn, other, 2)
		if r := replyTo(t, vConn, 5*time.Second); r != nil && slices.Contains(addrsOf(r), oIP) {
			t.Fatalf("victim got %s's address %s on a network it is not on", other, oIP)
		}
		// ... nor can the other sandbox see the victim's network.
		oConn := udpIn(t, h.sandbox(other).NetNS, &net.UDPAddr{IP: net.ParseIP(oIP)})
		askShared(t, oConn, victim, 3)
		if r := replyTo(t, oConn, 5*time.Second); r != nil && slices.Contains(addrsOf(r), vIP) {
			t.Fatalf("%s got %s's address %s on a network it is not on", other, victim, vIP)
		}

		t.Run("forged source", func(t *testing.T) {
			// The attacker takes the victim's address (root in its own
			// sandbox) and asks from the port the victim listens on.
			port := vConn.LocalAddr().(*net.UDPAddr).Port
			netnstest.Run(t, attacker, "ip", "addr", "add", vIP+"/32", "dev", "eth0", "nodad")
			xConn := udpIn(t, h.sandbox(attacker).NetNS, &net.UDPAddr{IP: net.ParseIP(vIP), Port: port})
			for id := range uint16(3) {
				askShared(t, xConn, attacker, 100+id)
			}
			if r := replyTo(t, vConn, 2*time.Second); r != nil {
				t.Fatalf("a query forged with the victim's source reached the resolver (reply %d to %s:%d)", r.Id, vIP, port)
			}
			if r := replyTo(t, xConn, 100*time.Millisecond); r != nil {
				t.Fatalf("the forger got a reply: %v", r)
			}
			// The victim's own query on that same socket still works.
			askShared(t, vConn, attacker, 200)
			if r := replyTo(t, vConn, 5*time.Second); r == nil || r.Id != 200 {
				t.Fatalf("victim's own query after the forgery: %v", r)
			}
		})
	})
}
