package kernel

import (
	"net/netip"
	"testing"

	"github.com/google/nftables"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// TestHostShimGuard: a sandbox on a macvlan (or ipvlan) network reaches
// the host through the network's host shim, past the bridges the input
// chain guards. It must not reach fabric's own ports there, on the shim's
// address nor on another host address it routes via the shim, over TCP
// or UDP; the host's other ports, a bridge sandbox's published port and a
// resolver on the host's lo (Docker's shared one is at 169.254.53.53)
// still answer it, and the drops are counted.
func TestHostShimGuard(t *testing.T) {
	for _, c := range []struct{ driver, mode string }{
		{datapath.DriverMacvlan, ""}, {datapath.DriverIPvlan, ""}, {datapath.DriverIPvlan, "l3"},
	} {
		t.Run(c.driver+c.mode, func(t *testing.T) {
			t.Parallel()
			if c.driver == datapath.DriverIPvlan {
				requireLinkKind(t, "ipvlan")
			}
			testHostShimGuard(t, c.driver, c.mode)
		})
	}
}

func testHostShimGuard(t *testing.T, driver, mode string) {
	sw := newSwitch(t)
	l := bareLab(t)
	l.dp = l.open(Options{GuardPorts: fabricGuard})
	sw.plug(l, "eth1")
	l.addAddr("eth1", "10.90.8.250/24") // the host's own LAN address
	const shim, hostAddr, dnsAddr = "10.90.8.254", "10.90.8.250", "169.254.53.53"

	n := parentNet("sg"+driver[:2]+mode+"0123456789", driver, "eth1", mode, "10.90.8.0/24")
	n.HostShim = netip.MustParseAddr(shim)
	l.ensureNetwork(n)
	lan := l.join(n, "e1", "", 2)
	// A hostile sandbox routes the host's other addresses via the shim.
	for _, dst := range []string{hostAddr, dnsAddr} {
		netnstest.Run(t, lan.name, "ip", "route", "replace", dst+"/32", "via", shim, "dev", "eth0")
	}

	// A bridge sandbox publishing a port, reached through the shim.
	b := l.bridgeNetwork("sgb", "br-sgb", "10.91.8.0/24", false)
	web := l.join(b, "web", "vsgw", 2, datapath.PortMapping{Proto: "tcp", HostPort: 8080, Port: 80})
	serveTCP(t, web.path, ":80")

	serveTCP(t, l.hostPath, ":7946")
	serveUDP(t, l.hostPath, ":7946")
	serveUDP(t, l.hostPath, ":4789")
	serveTCP(t, l.hostPath, ":7947")
	if err := l.hostNL.AddrAdd(l.link("lo"), mustAddr(dnsAddr+"/32")); err != nil {
		t.Fatal(err)
	}
	serveUDP(t, l.hostPath, dnsAddr+":53")

	me := lan.ep.Addr.Addr().String()
	for _, to := range []string{shim, hostAddr} {
		if got := mustDial(t, lan.path, "tcp4", to+":7947"); got != me {
			t.Errorf("host's other port on %s saw %q, want %s", to, got, me)
		}
	}
	if got := mustDial(t, lan.path, "tcp4", shim+":8080"); got == "" {
		t.Error("published port through the shim: no answer")
	}
	// An ipvlan L3 sandbox reaches an address on the host's lo only
	// through a local route on its parent: the kernel routes an L3
	// child's packet with the parent as output device, and that lookup
	// never finds lo's local route. The agent adds that route for the
	// shared resolver (agent/namesroutes.go); this test has no agent, so
	// L3 is not checked here.
	if mode != "l3" {
		if got := mustDial(t, lan.path, "udp4", dnsAddr+":53"); got != me {
			t.Errorf("resolver on the host's lo saw %q, want %s", got, me)
		}
	}
	for _, c := range []struct{ network, addr string }{
		{"tcp4", shim + ":7946"}, {"tcp4", hostAddr + ":7946"},
		{"udp4", shim + ":7946"}, {"udp4", hostAddr + ":7946"}, {"udp4", shim + ":4789"},
	} {
		before := l.counter("from-endpoint", "drop", "host-port")
		if got, err := dial(lan.path, c.network, c.addr); err == nil {
			t.Errorf("%s sandbox reached the host's %s %s through the shim (answer %q)", driver, c.network, c.addr, got)
		}
		if !l.waitCounter("from-endpoint", "drop", "host-port", before) {
			t.Errorf("%s %s: drop not counted", c.network, c.addr)
		}
	}

	// The guard goes with the last shim.
	if !shimGuardTableExists(t, l.hostPath) {
		t.Fatal("no shim guard table while a shim exists")
	}
	if err := l.dp.DeleteNetwork(ctx, n); err != nil {
		t.Fatal(err)
	}
	if shimGuardTableExists(t, l.hostPath) {
		t.Error("shim guard table left after the last shim's network was deleted")
	}
}

func shimGuardTableExists(t *testing.T, nsPath string) bool {
	t.Helper()
	c, done := nftIn(t, nsPath)
	defer done()
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if tb.Name == plumb.ShimGuardTable {
			return true
		}
	}
	return false
}
