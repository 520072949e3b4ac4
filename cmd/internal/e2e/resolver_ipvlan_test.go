package e2e

import (
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestSharedResolverIPvlan: a sandbox on an ipvlan network with a host
// shim gets answers from the resolver fabricd runs for Docker's
// (169.254.53.53 on the host's lo). In the routed modes (L3, L3S) the
// kernel looks the route of a child's packet to a host address up bound
// to the parent, which never found lo's: the query left for the LAN and
// no answer came. An L2 child sent it to its gateway; it now has a route
// via the shim. (Without a shim the host cannot answer its children at
// all: see README, Names.)
func TestSharedResolverIPvlan(t *testing.T) {
	requireKernel(t, "ipvlan")
	h := newHost(t, "--docker-plugin", filepath.Join(t.TempDir(), "fabric.sock"),
		"--dns-upstreams", "127.0.0.1:9") // nothing upstream: unknown names fail fast
	l := newLAN(t, h)
	l.plugAs(h, "eth2")
	l.plugAs(h, "eth3")
	// With the host shim: without one the host has no way to send to its
	// own ipvlan children, so no answer could come back (README, Names).
	for i, c := range []struct{ mode, parent, subnet, shim string }{
		{"l3", "eth1", "10.69.1.0/24", "true"}, {"l3s", "eth2", "10.69.2.0/24", "true"}, {"l2", "eth3", "10.69.3.0/24", "true"},
	} {
		t.Run(c.mode+"/host_shim="+c.shim, func(t *testing.T) {
			nw := h.name(fmt.Sprintf("iv%d", i))
			h.mustCtl("network", "create", "-d", "ipvlan", "--subnet", c.subnet, "-o", "parent="+c.parent,
				"-o", "ipvlan_mode="+c.mode, "-o", "host_shim="+c.shim, nw)
			asker, other := h.name(fmt.Sprintf("a%d", i)), h.name(fmt.Sprintf("o%d", i))
			h.mustCtl("run", "-d", "--name", asker, "--network", nw, "--", "sleep", "300")
			h.mustCtl("run", "-d", "--name", other, "--network", nw, "--", "sleep", "300")
			aIP, oIP := h.ip(asker, nw), h.ip(other, nw)
			conn := udpIn(t, h.sandbox(asker).NetNS, &net.UDPAddr{IP: net.ParseIP(aIP)})
			var r *dns.Msg
			deadline := time.Now().Add(20 * time.Second)
			for id := uint16(10 * i); r == nil && time.Now().Before(deadline); id++ {
				askShared(t, conn, other, id)
				r = replyTo(t, conn, 500*time.Millisecond)
			}
			if r == nil || !slices.Equal(addrsOf(r), []string{oIP}) {
				t.Fatalf("ipvlan %s sandbox %s (%s) asking 169.254.53.53 for %s: %v, want %s", c.mode, asker, aIP, other, r, oIP)
			}
		})
	}
}
