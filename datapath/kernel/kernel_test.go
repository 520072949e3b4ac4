package kernel

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/datapath"
	fabricns "github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/fabricnet/fabric/datapath/plumb"
)

var ctx = context.Background()

func TestSameNetworkEndpointsReachEachOther(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	a := l.bridgeNetwork("neta", "br-a", "10.89.1.0/24", false)
	j1, j2 := l.join(a, "ep1", "vh1", 2), l.join(a, "ep2", "vh2", 3)
	s1 := j1.name

	mustPing(t, s1, "10.89.1.3")
	mustPing(t, j2.name, "10.89.1.2")
	mustPing(t, s1, "10.89.1.1") // the gateway is the bridge

	br := l.link("br-a")
	if br.Attrs().MTU != 1450 || br.Attrs().Alias != datapath.OwnerPrefix+"neta" {
		t.Errorf("bridge MTU %d alias %q, want 1450 and the fabric alias", br.Attrs().MTU, br.Attrs().Alias)
	}
	vh := l.link("vh1")
	if vh.Attrs().MasterIndex != br.Attrs().Index || vh.Attrs().Alias != datapath.OwnerPrefix+"ep1" || vh.Attrs().MTU != 1450 {
		t.Errorf("host veth master %d alias %q MTU %d", vh.Attrs().MasterIndex, vh.Attrs().Alias, vh.Attrs().MTU)
	}
	assertHostVethIPv4Only(t, l, "vh1")
	if eth0 := child(t, j1.path, "eth0"); eth0.Attrs().HardwareAddr.String() != "02:42:0a:59:01:02" || eth0.Attrs().MTU != 1450 {
		t.Errorf("sandbox eth0 MAC %s MTU %d", eth0.Attrs().HardwareAddr, eth0.Attrs().MTU)
	}
	out := netnstest.Run(t, s1, "ip", "-4", "route", "show", "default")
	if !strings.Contains(out, "via 10.89.1.1 dev eth0") {
		t.Errorf("default route in sandbox: %q", out)
	}
}

func TestNetworksAreIsolatedExceptThroughMultiHomedSandbox(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	a := l.bridgeNetwork("neta", "br-a", "10.89.1.0/24", false)
	b := l.bridgeNetwork("netb", "br-b", "10.89.2.0/24", false)
	sa, sb := l.join(a, "a1", "va1", 2).name, l.join(b, "b1", "vb1", 2).name
	m := l.join(a, "ma", "vma", 3)
	sm, pm := m.name, m.path
	l.ensureEndpoint(b, endpoint("mb", b, pm, "eth1", "vmb", 3, false))

	mustPing(t, sm, "10.89.1.2")
	mustPing(t, sm, "10.89.2.2")
	mustNotPing(t, sa, "10.89.2.2")
	mustNotPing(t, sb, "10.89.1.2")
	if l.isolationDrops() == 0 {
		t.Error("the isolation rule did not drop the ping from neta to netb")
	}

	routes := netnstest.Run(t, sm, "ip", "-4", "route", "show", "default")
	if strings.TrimSpace(routes) != "default via 10.89.1.1 dev eth0" {
		t.Errorf("multi-homed default routes: %q", routes)
	}
	// Moving the default route to the other endpoint replaces it.
	l.ensureEndpoint(b, endpoint("mb", b, pm, "eth1", "vmb", 3, true))
	l.ensureEndpoint(a, endpoint("ma", a, pm, "eth0", "vma", 3, false))
	routes = netnstest.Run(t, sm, "ip", "-4", "route", "show", "default")
	if strings.TrimSpace(routes) != "default via 10.89.2.1 dev eth1" {
		t.Errorf("default routes after switching: %q", routes)
	}
}

func TestInternalNetworkHasNoEgress(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	_, outside := l.addOutside()
	serveTCP(t, outside, ":7000")
	in := l.bridgeNetwork("neti", "br-i", "10.89.3.0/24", true)
	a := l.bridgeNetwork("neta", "br-a", "10.89.1.0/24", false)
	i1 := l.join(in, "i1", "vi1", 2)
	s1, p1 := i1.name, i1.path
	l.join(in, "i2", "vi2", 3)
	pa := l.join(a, "a1", "va1", 2).path

	mustPing(t, s1, "10.89.3.3")
	mustNotPing(t, s1, uplinkOutside)
	mustNotPing(t, s1, "10.89.1.2")
	if got, err := dial(p1, "tcp4", uplinkOutside+":7000"); err == nil {
		t.Errorf("internal sandbox reached the outside (seen as %s)", got)
	}
	if got := mustDial(t, pa, "tcp4", uplinkOutside+":7000"); got != uplinkHost {
		t.Errorf("control: non-internal egress seen as %s, want %s", got, uplinkHost)
	}
}

func TestEgressIsMasqueradedToUplinkAddress(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	_, outside := l.addOutside()
	serveTCP(t, outside, ":7000")
	a := l.bridgeNetwork("neta", "br-a", "10.89.1.0/24", false)
	j1 := l.join(a, "ep1", "vh1", 2)

	mustPing(t, j1.name, uplinkOutside)
	if got := mustDial(t, j1.path, "tcp4", uplinkOutside+":7000"); got != uplinkHost {
		t.Errorf("outside saw the sandbox as %s, want the uplink address %s", got, uplinkHost)
	}
}

func TestEnsureTwiceChangesNothing(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	a := l.bridgeNetwork("neta", "br-a", "10.89.1.0/24", false)
	e1 := l.join(a, "ep1", "vh1", 2, datapath.PortMapping{Proto: "tcp", HostPort: 8080, Port: 80}).ep
	e2 := l.join(a, "ep2", "vh2", 3).ep

	indexes := func() [3]int {
		return [3]int{l.link("br-a").Attrs().Index, l.link("vh1").Attrs().Index, l.link("vh2").Attrs().Index}
	}
	before, handle, counts := indexes(), l.tableHandle(), l.ruleCounts()
	if handle == "" {
		t.Fatal("no fabric table")
	}
	for range 2 {
		l.ensureNetwork(a)
		l.ensureEndpoint(a, e1)
		l.ensureEndpoint(a, e2)
	}
	if after := indexes(); after != before {
		t.Errorf("link indexes changed: %v -> %v", before, after)
	}
	if h := l.tableHandle(); h != handle {
		t.Errorf("nftables table rebuilt (handle %s -> %s) although nothing changed", handle, h)
	}
	if c := l.ruleCounts(); !equalCounts(c, counts) {
		t.Errorf("rule counts changed: %v -> %v", counts, c)
	}
	// A new endpoint without ports does not touch nftables either.
	l.join(a, "ep3", "vh3", 4)
	if h := l.tableHandle(); h != handle {
		t.Errorf("endpoint without ports rebuilt the table")
	}
	// A host port another endpoint publishes is refused before anything
	// is made.
	_, p4 := l.sandbox()
	dup := endpoint("ep4", a, p4, "eth0", "vh4", 5, true, datapath.PortMapping{Proto: "tcp", HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 8080, Port: 80})
	if err := l.dp.EnsureEndpoint(ctx, a, dup); !errors.Is(err, datapath.ErrInvalid) {
		t.Errorf("EnsureEndpoint with a taken host port: %v, want ErrInvalid", err)
	}
	if !l.linkGone("vh4") {
		t.Error("refused endpoint left a veth")
	}
	// Changing ports does.
	elems := l.portElemCount()
	e2.Ports = []datapath.PortMapping{{Proto: "udp", HostPort: 5353, Port: 53}}
	l.ensureEndpoint(a, e2)
	if c := l.portElemCount(); c != elems+1 {
		t.Errorf("after adding a port: %d published-port elements (was %d)", c, elems)
	}
}

func equalCounts(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestEnsureRepairsDrift(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	a := l.bridgeNetwork("neta", "br-a", "10.89.1.0/24", false)
	j1 := l.join(a, "ep1", "vh1", 2)
	s1, e1 := j1.name, j1.ep
	s2 := l.join(a, "ep2", "vh2", 3).name

	br := l.link("br-a")
	gw := mustAddr("10.89.1.1/24")
	if err := l.hostNL.AddrDel(br, gw); err != nil {
		t.Fatal(err)
	}
	if err := l.hostNL.AddrAdd(br, mustAddr("10.77.0.1/16")); err != nil {
		t.Fatal(err)
	}
	if err := l.hostNL.LinkSetMTU(br, 1300); err != nil {
		t.Fatal(err)
	}
	vh := l.link("vh1")
	if err := l.hostNL.LinkSetNoMaster(vh); err != nil {
		t.Fatal(err)
	}
	netnstest.Run(t, l.hostName, "ip", "link", "set", "vh1", "down")
	netnstest.Run(t, l.hostName, "sysctl", "-q", "-w", "net.ipv6.conf.vh1.disable_ipv6=0")
	netnstest.Run(t, s1, "ip", "addr", "flush", "dev", "eth0")
	netnstest.Run(t, s1, "ip", "link", "set", "eth0", "mtu", "1280")
	netnstest.Run(t, l.hostName, "nft", "delete", "table", "ip", "fabric")

	l.ensureNetwork(a)
	l.ensureEndpoint(a, e1)

	br = l.link("br-a")
	addrs, err := l.hostNL.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.89.1.1/24" || br.Attrs().MTU != 1450 {
		t.Errorf("bridge after repair: MTU %d addrs %v", br.Attrs().MTU, addrs)
	}
	if l.tableHandle() == "" {
		t.Error("EnsureNetwork did not restore the deleted nftables table")
	}
	if l.link("vh1").Attrs().MasterIndex != br.Attrs().Index {
		t.Error("host veth not re-attached to the bridge")
	}
	assertHostVethIPv4Only(t, l, "vh1")
	out := netnstest.Run(t, s1, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
	if !strings.Contains(out, "10.89.1.2/24") || !strings.Contains(netnstest.Run(t, s1, "ip", "link", "show", "eth0"), "mtu 1450") {
		t.Errorf("sandbox side not repaired: %s", out)
	}
	mustPing(t, s2, "10.89.1.2")
	mustPing(t, s1, a.Gateway.String())
}

func TestEndpointRecreatedWhenPeerIsElsewhere(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	a := l.bridgeNetwork("neta", "br-a", "10.89.1.0/24", false)
	j1 := l.join(a, "ep1", "vh1", 2)
	s1, p1, e1 := j1.name, j1.path, j1.ep
	_, other := l.sandbox()
	oldIndex := l.link("vh1").Attrs().Index

	// Move the peer away, as if the sandbox had been replaced by another
	// namespace while something kept the old one alive.
	h := netnstest.Handle(t, p1)
	defer h.Close()
	moveLink(t, h, "eth0", other)

	l.ensureEndpoint(a, e1)
	if l.link("vh1").Attrs().Index == oldIndex {
		t.Error("host veth was kept although its peer left the sandbox")
	}
	mustPing(t, s1, "10.89.1.1")
}

func TestFailedEndpointSetupLeavesNothing(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	a := l.bridgeNetwork("neta", "br-a", "10.89.1.0/24", false)
	s1, p1 := l.sandbox()
	e1 := endpoint("ep1", a, p1, "eth0", "vh1", 2, true)
	boom := errors.New("injected failure")
	faulty := l.faulty(plumb.Faults{VethCreated: func() error { return boom }})
	if err := faulty.EnsureEndpoint(ctx, a, e1); !errors.Is(err, boom) {
		t.Fatalf("EnsureEndpoint: %v, want the injected failure", err)
	}
	if !l.linkGone("vh1") {
		t.Error("host veth left behind after a failed set-up")
	}
	if out := netnstest.Run(t, s1, "ip", "-o", "link", "show"); strings.Contains(out, "eth0") {
		t.Errorf("sandbox interface left behind: %s", out)
	}
	l.ensureEndpoint(a, e1)
	mustPing(t, s1, "10.89.1.1")
}

func TestDeleteRemovesAndToleratesMissing(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	a := network("neta", "br-a", "10.89.1.0/24", false)
	_, p1 := l.sandbox()
	e1 := endpoint("ep1", a, p1, "eth0", "vh1", 2, true, datapath.PortMapping{Proto: "tcp", HostPort: 8080, Port: 80})

	if err := l.dp.DeleteEndpoint(ctx, a, e1); err != nil {
		t.Errorf("DeleteEndpoint on missing endpoint: %v", err)
	}
	if err := l.dp.DeleteNetwork(ctx, a); err != nil {
		t.Errorf("DeleteNetwork on missing network: %v", err)
	}
	l.ensureNetwork(a)
	l.ensureEndpoint(a, e1)
	if err := l.dp.DeleteEndpoint(ctx, a, e1); err != nil {
		t.Fatalf("DeleteEndpoint: %v", err)
	}
	if !l.linkGone("vh1") || l.portElemCount() != 0 {
		t.Errorf("endpoint left behind: veth gone %v, published-port elements %d", l.linkGone("vh1"), l.portElemCount())
	}
	if err := l.dp.DeleteEndpoint(ctx, a, e1); err != nil {
		t.Errorf("second DeleteEndpoint: %v", err)
	}
	if err := l.dp.DeleteNetwork(ctx, a); err != nil {
		t.Fatalf("DeleteNetwork: %v", err)
	}
	if !l.linkGone("br-a") {
		t.Error("DeleteNetwork left the bridge")
	}
	if h := l.tableHandle(); h != "" {
		t.Errorf("DeleteNetwork of the last network left the nftables table (handle %s)", h)
	}
	if err := l.dp.DeleteNetwork(ctx, a); err != nil {
		t.Errorf("second DeleteNetwork: %v", err)
	}
}

func TestForeignLinksAreNotTouched(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	la := netlink.NewLinkAttrs()
	la.Name = "br-x"
	la.Flags = net.FlagUp
	if err := l.hostNL.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
		t.Fatal(err)
	}
	x := network("netx", "br-x", "10.89.9.0/24", false)
	if err := l.dp.EnsureNetwork(ctx, x); !errors.Is(err, datapath.ErrInvalid) {
		t.Errorf("EnsureNetwork over a foreign link: %v, want ErrInvalid", err)
	}
	if err := l.dp.DeleteNetwork(ctx, x); err != nil {
		t.Errorf("DeleteNetwork: %v", err)
	}
	if br := l.link("br-x"); br.Attrs().Alias != "" || br.Attrs().MTU != 1500 {
		t.Error("foreign link was changed")
	}
}

func TestRestartAdoptsExistingTable(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	_, outside := l.addOutside()
	a := network("neta", "br-a", "10.89.1.0/24", false)
	b := network("netb", "br-b", "10.89.2.0/24", false)
	l.ensureNetwork(a)
	_, p1 := l.sandbox()
	serveTCP(t, p1, ":80")
	e1 := endpoint("ep1", a, p1, "eth0", "vh1", 2, true, datapath.PortMapping{Proto: "tcp", HostPort: 8080, Port: 80})
	l.ensureEndpoint(a, e1)
	handle := l.tableHandle()
	if err := l.dp.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := l.dp.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := l.dp.EnsureNetwork(ctx, a); !errors.Is(err, errClosed) {
		t.Errorf("EnsureNetwork after Close: %v", err)
	}
	if l.link("br-a") == nil || l.tableHandle() != handle {
		t.Fatal("Close tore down state")
	}

	l.dp = l.open(Options{})
	if st := l.dp.Status(ctx); !strings.Contains(strings.Join(st.Details, ";"), "1 bridges, 1 port rules") {
		t.Errorf("restarted Status = %+v", st)
	}
	l.ensureNetwork(a)
	if l.tableHandle() != handle {
		t.Error("re-ensuring an adopted network rebuilt the table")
	}
	// A rebuild for a new network keeps ep1's port although ep1 was not
	// re-ensured since the restart.
	l.ensureNetwork(b)
	if n := l.portElemCount(); n != 1 {
		t.Errorf("published-port elements after restart and rebuild: %d, want 1", n)
	}
	mustDial(t, outside, "tcp4", uplinkHost+":8080")
}

// TestCurrentNamespaceOption runs New with Options{} on a thread inside a
// test namespace: everything, sysctls included, must land in that
// namespace, although later calls come from threads outside it.
func TestCurrentNamespaceOption(t *testing.T) {
	t.Parallel()
	netnstest.RequireRoot(t)
	name, path := netnstest.New(t, "fkh")
	var dp *Datapath
	if err := fabricns.Do(path, func() (err error) {
		dp, err = New(nil, Options{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	bridge := netnstest.UniqueName("fk")
	n := network("netc", bridge, "10.89.7.0/24", false)
	if err := dp.EnsureNetwork(ctx, n); err != nil {
		t.Fatalf("EnsureNetwork: %v", err)
	}
	netnstest.Run(t, name, "ip", "link", "show", bridge)
	if out := netnstest.Run(t, name, "sysctl", "-n", "net.ipv4.ip_forward", "net.ipv4.conf."+bridge+".route_localnet"); strings.Fields(out)[0] != "1" || strings.Fields(out)[1] != "1" {
		t.Errorf("sysctls in the namespace: %q", out)
	}
	if _, err := netlink.LinkByName(bridge); err == nil {
		t.Error("bridge appeared in the test process's own namespace")
	}
	if err := dp.DeleteNetwork(ctx, n); err != nil {
		t.Fatal(err)
	}
}

func TestValidation(t *testing.T) {
	good := network("n", "br-n", "10.89.1.0/24", false)
	bad := []datapath.Network{
		{},
		func() datapath.Network { n := good; n.Bridge = "a-name-that-is-too-long"; return n }(),
		func() datapath.Network { n := good; n.Gateway = n.Gateway.Prev().Prev(); return n }(),
		func() datapath.Network { n := good; n.Driver = "overlay"; return n }(),
		func() datapath.Network { n := good; n.MTU = 20; return n }(),
	}
	for i, n := range bad {
		if err := plumb.ValidateNetwork(n); !errors.Is(err, datapath.ErrInvalid) {
			t.Errorf("network %d: %v, want ErrInvalid", i, err)
		}
	}
	if err := plumb.ValidateNetwork(good); err != nil {
		t.Fatal(err)
	}
	ep := endpoint("e", good, "/var/run/netns/x", "eth0", "vh", 2, true)
	badEPs := []func(*datapath.Endpoint){
		func(e *datapath.Endpoint) { e.ID = "" },
		func(e *datapath.Endpoint) { e.NetNSPath = "" },
		func(e *datapath.Endpoint) { e.Addr = good.Subnet },
		func(e *datapath.Endpoint) { e.MAC = net.HardwareAddr{1, 2, 3, 4, 5, 6} },
		func(e *datapath.Endpoint) { e.Ports = []datapath.PortMapping{{Proto: "sctp", HostPort: 1, Port: 1}} },
		func(e *datapath.Endpoint) { e.NetworkID = "other" },
		func(e *datapath.Endpoint) { e.Addr = netip.PrefixFrom(e.Addr.Addr(), 32) },
		func(e *datapath.Endpoint) { e.Addr = netip.MustParsePrefix("10.89.1.255/24") },
	}
	for i, mutate := range badEPs {
		e := ep
		mutate(&e)
		if err := plumb.ValidateEndpoint(good, e); !errors.Is(err, datapath.ErrInvalid) {
			t.Errorf("endpoint %d: %v, want ErrInvalid", i, err)
		}
	}
	if err := plumb.ValidateEndpoint(good, ep); err != nil {
		t.Fatal(err)
	}
}

// Many published ports: they go in as one netlink batch that the kernel
// answers message by message. With the socket's default buffers the
// replies overflowed (ENOBUFS) from about 44 ports on (a rule per port,
// then), and every later change failed. 1,000 ports (1,000 map elements)
// must go in, stay correct, and a later change still works.
func TestManyPublishedPorts(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	a := l.bridgeNetwork("netp", "br-p", "10.89.7.0/24", false)
	const n = 1000
	ports := make([]datapath.PortMapping, 0, n)
	for i := range n {
		ports = append(ports, datapath.PortMapping{Proto: "tcp", HostPort: uint16(20000 + i), Port: 80})
	}
	l.join(a, "ep1", "vh1", 2, ports...)
	if c := l.portElemCount(); c != n {
		t.Fatalf("published-port elements with %d published ports: %d", n, c)
	}
	// The connection still works for the next change (no replies of the
	// big batch left unread on it).
	l.join(a, "ep2", "vh2", 3, datapath.PortMapping{Proto: "udp", HostPort: 5353, Port: 53})
	if c := l.portElemCount(); c != n+1 {
		t.Errorf("after one more port: %d published-port elements, want %d", c, n+1)
	}
}

// assertHostVethIPv4Only: a host-side veth is up with IPv6 off, so it adds
// nothing to the host's IPv6 FIB (see setHostVethUp).
func assertHostVethIPv4Only(t *testing.T, l *lab, name string) {
	t.Helper()
	if l.link(name).Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("host veth %s is down", name)
	}
	if v := strings.TrimSpace(netnstest.Run(t, l.hostName, "cat", "/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6")); v != "1" {
		t.Errorf("host veth %s: disable_ipv6 = %q, want 1", name, v)
	}
	if out := strings.TrimSpace(netnstest.Run(t, l.hostName, "ip", "-6", "addr", "show", "dev", name)); out != "" {
		t.Errorf("host veth %s has IPv6 addresses: %s", name, out)
	}
	if out := strings.TrimSpace(netnstest.Run(t, l.hostName, "ip", "-6", "route", "show", "table", "all", "dev", name)); out != "" {
		t.Errorf("host veth %s has IPv6 routes: %s", name, out)
	}
}
