package kernel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
	fabricns "github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// Addresses used by the tests exist only inside namespaces the tests make.
const (
	uplinkHost    = "198.18.0.1"
	uplinkOutside = "198.18.0.2"
)

// lab is one test's "host" namespace with a datapath programming it.
type lab struct {
	t        *testing.T
	hostName string
	hostPath string
	dp       *Datapath
	hostNL   *netlink.Handle
}

func newLab(t *testing.T) *lab {
	t.Helper()
	l := bareLab(t)
	l.dp = l.open(Options{})
	return l
}

// bareLab is a host namespace without a datapath yet.
func bareLab(t *testing.T) *lab {
	t.Helper()
	netnstest.RequireRoot(t)
	name, path := netnstest.New(t, "fkh")
	h := netnstest.Handle(t, path)
	t.Cleanup(h.Close)
	return &lab{t: t, hostName: name, hostPath: path, hostNL: h}
}

// open starts a datapath with opts on the lab's host namespace, closed at
// cleanup.
func (l *lab) open(opts Options) *Datapath {
	l.t.Helper()
	opts.NetNSPath = l.hostPath
	dp, err := New(slog.New(slog.NewTextHandler(testWriter{l.t}, &slog.HandlerOptions{Level: slog.LevelDebug})), opts)
	if err != nil {
		l.t.Fatalf("New: %v", err)
	}
	l.t.Cleanup(func() { _ = dp.Close() })
	return dp
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func network(id, bridge, subnet string, internal bool) datapath.Network {
	p := netip.MustParsePrefix(subnet)
	return datapath.Network{
		ID: id, Name: id, Driver: "bridge", Subnet: p, Gateway: p.Addr().Next(),
		Bridge: bridge, MTU: 1450, Internal: internal,
	}
}

// sandbox makes a namespace for a container; returns its name and path.
func (l *lab) sandbox() (string, string) {
	l.t.Helper()
	return netnstest.New(l.t, "fks")
}

func endpoint(id string, n datapath.Network, nsPath, ifName, hostIf string, host byte, defaultRoute bool, ports ...datapath.PortMapping) datapath.Endpoint {
	a := n.Subnet.Addr().As4()
	a[3] = host
	return datapath.Endpoint{
		ID: id, NetworkID: n.ID, NetNSPath: nsPath, IfName: ifName, HostIfName: hostIf,
		Addr:         netip.PrefixFrom(netip.AddrFrom4(a), n.Subnet.Bits()),
		MAC:          net.HardwareAddr{0x02, 0x42, a[0], a[1], a[2], a[3]},
		DefaultRoute: defaultRoute,
		Ports:        ports,
	}
}

func (l *lab) ensureNetwork(n datapath.Network) {
	l.t.Helper()
	if err := l.dp.EnsureNetwork(context.Background(), n); err != nil {
		l.t.Fatalf("EnsureNetwork %s: %v", n.ID, err)
	}
}

func (l *lab) ensureEndpoint(n datapath.Network, ep datapath.Endpoint) {
	l.t.Helper()
	if err := l.dp.EnsureEndpoint(context.Background(), n, ep); err != nil {
		l.t.Fatalf("EnsureEndpoint %s: %v", ep.ID, err)
	}
}

// ensureAgainKeeps ensures n and ep again and checks that the host's link
// name is still the link it was: ensuring what is in place changes nothing.
func (l *lab) ensureAgainKeeps(n datapath.Network, ep datapath.Endpoint, name string) {
	l.t.Helper()
	index := l.link(name).Attrs().Index
	l.ensureNetwork(n)
	l.ensureEndpoint(n, ep)
	if l.link(name).Attrs().Index != index {
		l.t.Errorf("ensuring again replaced %s", name)
	}
}

// bridgeNetwork describes a bridge network and ensures it on l.
func (l *lab) bridgeNetwork(id, bridge, subnet string, internal bool) datapath.Network {
	l.t.Helper()
	n := network(id, bridge, subnet, internal)
	l.ensureNetwork(n)
	return n
}

// ensureOn ensures n on every one of hosts.
func ensureOn(n datapath.Network, hosts ...*lab) {
	for _, h := range hosts {
		h.t.Helper()
		h.ensureNetwork(n)
	}
}

// joined is a sandbox a test made with one endpoint ensured in it.
type joined struct {
	name, path string // the sandbox namespace's
	ep         datapath.Endpoint
}

// join makes a sandbox and ensures in it an endpoint of n as eth0 with
// the default route. hostIf names the host side of its veth ("" for a
// macvlan or ipvlan child); host is the last byte of its address.
func (l *lab) join(n datapath.Network, id, hostIf string, host byte, ports ...datapath.PortMapping) joined {
	l.t.Helper()
	name, path := l.sandbox()
	ep := endpoint(id, n, path, "eth0", hostIf, host, true, ports...)
	l.ensureEndpoint(n, ep)
	return joined{name: name, path: path, ep: ep}
}

// addOutside connects a new "outside" namespace to the host by a veth:
// host up0 = 198.18.0.1/24, outside eth0 = 198.18.0.2/24.
func (l *lab) addOutside() (string, string) {
	l.t.Helper()
	name, path := netnstest.New(l.t, "fko")
	ons, err := netns.GetFromPath(path)
	if err != nil {
		l.t.Fatal(err)
	}
	defer ons.Close()
	la := netlink.NewLinkAttrs()
	la.Name = "up0"
	la.Flags = net.FlagUp
	if err := l.hostNL.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(ons), PeerTxQLen: -1}); err != nil {
		l.t.Fatalf("create uplink: %v", err)
	}
	up, err := l.hostNL.LinkByName("up0")
	if err != nil {
		l.t.Fatal(err)
	}
	if err := l.hostNL.AddrAdd(up, mustAddr(uplinkHost+"/24")); err != nil {
		l.t.Fatal(err)
	}
	oh := netnstest.Handle(l.t, path)
	defer oh.Close()
	eth0, err := oh.LinkByName("eth0")
	if err != nil {
		l.t.Fatal(err)
	}
	if err := oh.AddrAdd(eth0, mustAddr(uplinkOutside+"/24")); err != nil {
		l.t.Fatal(err)
	}
	if err := oh.LinkSetUp(eth0); err != nil {
		l.t.Fatal(err)
	}
	return name, path
}

func mustAddr(s string) *netlink.Addr {
	a, err := netlink.ParseAddr(s)
	if err != nil {
		panic(err)
	}
	return a
}

// ping sends one echo request from the named namespace, bounded in time.
func ping(nsName, ip string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", nsName, "ping", "-n", "-c1", "-W1", ip).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v: %s", ip, nsName, err, out)
	}
	return nil
}

// mustPing needs a reply within three tries (the first may wait for ARP).
func mustPing(t *testing.T, nsName, ip string) {
	t.Helper()
	var err error
	for range 3 {
		if err = ping(nsName, ip); err == nil {
			return
		}
	}
	t.Fatal(err)
}

func mustNotPing(t *testing.T, nsName, ip string) {
	t.Helper()
	if err := ping(nsName, ip); err == nil {
		t.Fatalf("ping %s from %s succeeded, want it blocked", ip, nsName)
	}
}

// serveTCP listens inside the namespace at path and answers every
// connection with the client address it saw, then closes it.
func serveTCP(t *testing.T, nsPath, addr string) {
	t.Helper()
	netnstest.Serve(t, nsPath, "tcp4", addr, 2*time.Second, func(c net.Conn) {
		_, _ = io.WriteString(c, c.RemoteAddr().(*net.TCPAddr).IP.String())
	})
}

// serveUDP answers every datagram with the sender address it saw.
func serveUDP(t *testing.T, nsPath, addr string) {
	t.Helper()
	netnstest.ServePackets(t, nsPath, "udp4", addr, func(pc net.PacketConn, _ []byte, from net.Addr) {
		_, _ = pc.WriteTo([]byte(from.(*net.UDPAddr).IP.String()), from)
	})
}

// dial connects from inside the namespace at path and returns what the
// server answered (the client address as the server saw it).
func dial(nsPath, network, addr string) (string, error) {
	var got string
	err := fabricns.Do(nsPath, func() error {
		c, err := net.DialTimeout(network, addr, 1500*time.Millisecond)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(1500 * time.Millisecond))
		if network == "udp4" {
			if _, err := c.Write([]byte("?")); err != nil {
				return err
			}
			buf := make([]byte, 64)
			n, err := c.Read(buf)
			got = string(buf[:n])
			return err
		}
		b, err := io.ReadAll(c)
		got = string(b)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("%s %s from %s: %w", network, addr, nsPath, err)
	}
	if got == "" {
		return "", errors.New("empty answer from " + addr)
	}
	return got, nil
}

// mustDial needs an answer within three tries and returns it.
func mustDial(t *testing.T, nsPath, network, addr string) string {
	t.Helper()
	var err error
	for range 3 {
		var got string
		if got, err = dial(nsPath, network, addr); err == nil {
			return got
		}
	}
	t.Fatal(err)
	return ""
}

func (l *lab) link(name string) netlink.Link {
	l.t.Helper()
	link, err := l.hostNL.LinkByName(name)
	if err != nil {
		l.t.Fatalf("link %s: %v", name, err)
	}
	return link
}

func (l *lab) linkGone(name string) bool {
	_, err := l.hostNL.LinkByName(name)
	return plumb.IsNotFound(err)
}

var tableHandleRE = regexp.MustCompile(`"family": "ip", "name": "fabric", "handle": (\d+)`)

// tableHandle is the kernel's handle of the fabric table; it changes
// whenever the table is rebuilt. "" means there is no table.
func (l *lab) tableHandle() string { return l.handleOf(tableHandleRE) }

// handleOf is the handle re (one group) finds in the tables of l's host
// namespace, "" if none.
func (l *lab) handleOf(re *regexp.Regexp) string {
	l.t.Helper()
	m := re.FindStringSubmatch(netnstest.Run(l.t, l.hostName, "nft", "-j", "list", "tables"))
	if m == nil {
		return ""
	}
	return m[1]
}

// nftIn opens an nftables connection into the namespace at nsPath; done
// releases the namespace handle the connection works through.
func nftIn(t *testing.T, nsPath string) (c *nftables.Conn, done func()) {
	t.Helper()
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	c, err = nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		ns.Close()
		t.Fatal(err)
	}
	return c, func() { ns.Close() }
}

// moveLink moves the link called name, seen through h, into the namespace
// at nsPath.
func moveLink(t *testing.T, h *netlink.Handle, name, nsPath string) {
	t.Helper()
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetNsFd(link, int(ns)); err != nil {
		t.Fatal(err)
	}
}

// neighbours lists the IPv4 neighbour entries of ifName in the namespace
// at nsPath.
func neighbours(t *testing.T, nsPath, ifName string) []netlink.Neigh {
	t.Helper()
	h := netnstest.Handle(t, nsPath)
	defer h.Close()
	link, err := h.LinkByName(ifName)
	if err != nil {
		t.Fatal(err)
	}
	neighs, err := h.NeighList(link.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		t.Fatalf("neighbours of %s: %v", ifName, err)
	}
	return neighs
}

// ruleCounts returns the number of rules per chain of the fabric table.
func (l *lab) ruleCounts() map[string]int {
	l.t.Helper()
	c, done := nftIn(l.t, l.hostPath)
	defer done()
	counts := map[string]int{}
	for _, name := range []string{chainFwd, chainIn, chainPre, chainOut, chainPost} {
		rules, err := c.GetRules(table, &nftables.Chain{Name: name, Table: table})
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			l.t.Fatalf("rules of %s: %v", name, err)
		}
		counts[name] = len(rules)
	}
	return counts
}

// setBridgeNetfilter turns br_netfilter's iptables hook on or off for
// bridged traffic in the lab's host namespace (it is per namespace).
func (l *lab) setBridgeNetfilter(on bool) {
	l.t.Helper()
	v := "0"
	if on {
		v = "1"
	}
	err := fabricns.Do(l.hostPath, func() error {
		return plumb.EnsureSysctl("net/bridge/bridge-nf-call-iptables", v)
	})
	if err != nil {
		l.t.Skipf("br_netfilter sysctl not available: %v", err)
	}
}

// faulty is a second datapath on l's host namespace whose steps fail as
// f says; it is closed at the end of the test.
func (l *lab) faulty(f plumb.Faults) *Datapath {
	l.t.Helper()
	return l.open(Options{faults: f})
}
