package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
	fabricns "github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// overlayHosts builds two hosts joined by an underlay veth (ul0 on both
// sides, prefix.1/24 and prefix.2/24), each with a datapath whose tunnel
// is its underlay address.
func overlayHosts(t *testing.T, prefix string, port uint16) (a, b *lab, aIP, bIP netip.Addr) {
	t.Helper()
	a, b = bareLab(t), bareLab(t)
	aIP, bIP = netip.MustParseAddr(prefix+".1"), netip.MustParseAddr(prefix+".2")
	bns, err := netns.GetFromPath(b.hostPath)
	if err != nil {
		t.Fatal(err)
	}
	defer bns.Close()
	la := netlink.NewLinkAttrs()
	la.Name = "ul0"
	if err := a.hostNL.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "ul0", PeerNamespace: netlink.NsFd(bns), PeerTxQLen: -1}); err != nil {
		t.Fatalf("create underlay veth: %v", err)
	}
	for _, h := range []struct {
		l    *lab
		addr netip.Addr
	}{{a, aIP}, {b, bIP}} {
		ul := h.l.link("ul0")
		if err := h.l.hostNL.AddrAdd(ul, mustAddr(h.addr.String()+"/24")); err != nil {
			t.Fatal(err)
		}
		if err := h.l.hostNL.LinkSetUp(ul); err != nil {
			t.Fatal(err)
		}
		h.l.dp = h.l.open(Options{Tunnel: datapath.Tunnel{Local: h.addr, Port: port}})
	}
	return a, b, aIP, bIP
}

func overlayNetwork(id, bridge, subnet string, vni uint32) datapath.Network {
	n := network(id, bridge, subnet, false)
	n.Driver = datapath.DriverOverlay
	n.VNI = vni
	return n
}

func remoteOf(ep datapath.Endpoint, node netip.Addr) datapath.Remote {
	return datapath.Remote{Addr: ep.Addr.Addr(), MAC: ep.MAC, Node: node}
}

func (l *lab) setRemotes(n datapath.Network, remotes ...datapath.Remote) {
	l.t.Helper()
	if err := l.dp.SetRemotes(ctx, n, remotes); err != nil {
		l.t.Fatalf("SetRemotes %s: %v", n.ID, err)
	}
}

func (l *lab) vxlan(name string) *netlink.Vxlan {
	l.t.Helper()
	v, ok := l.link(name).(*netlink.Vxlan)
	if !ok {
		l.t.Fatalf("link %s is a %s, want vxlan", name, l.link(name).Type())
	}
	return v
}

// tunnelEntries lists the VXLAN device's own FDB entries ("mac>dst
// state") and its neighbours ("ip>mac state"), sorted.
func (l *lab) tunnelEntries(name string) (fdb, neigh []string) {
	l.t.Helper()
	idx := l.link(name).Attrs().Index
	all, err := l.hostNL.NeighList(idx, unix.AF_BRIDGE)
	if err != nil {
		l.t.Fatal(err)
	}
	for _, e := range all {
		if e.LinkIndex == idx && e.Flags&netlink.NTF_SELF != 0 && e.Flags&netlink.NTF_MASTER == 0 && e.IP != nil {
			fdb = append(fdb, fmt.Sprintf("%s>%s %#x", e.HardwareAddr, e.IP, e.State))
		}
	}
	ns, err := l.hostNL.NeighList(idx, netlink.FAMILY_V4)
	if err != nil {
		l.t.Fatal(err)
	}
	for _, e := range ns {
		if e.LinkIndex == idx {
			neigh = append(neigh, fmt.Sprintf("%s>%s %#x", e.IP, e.HardwareAddr, e.State))
		}
	}
	slices.Sort(fdb)
	slices.Sort(neigh)
	return fdb, neigh
}

// wantTunnelEntries are tunnelEntries for exactly remotes, permanent.
func wantTunnelEntries(remotes ...datapath.Remote) (fdb, neigh []string) {
	for _, r := range remotes {
		fdb = append(fdb, fmt.Sprintf("%s>%s %#x", r.MAC, r.Node, netlink.NUD_PERMANENT))
		neigh = append(neigh, fmt.Sprintf("%s>%s %#x", r.Addr, r.MAC, netlink.NUD_PERMANENT))
	}
	slices.Sort(fdb)
	slices.Sort(neigh)
	return fdb, neigh
}

func (l *lab) checkTunnelEntries(name string, remotes ...datapath.Remote) {
	l.t.Helper()
	fdb, neigh := l.tunnelEntries(name)
	wantFDB, wantNeigh := wantTunnelEntries(remotes...)
	if !slices.Equal(fdb, wantFDB) || !slices.Equal(neigh, wantNeigh) {
		l.t.Errorf("%s: FDB %q neighbours %q, want FDB %q neighbours %q", name, fdb, neigh, wantFDB, wantNeigh)
	}
}

// sandboxNeighbour returns the MAC the sandbox's eth0 has for ip, or nil.
func sandboxNeighbour(t *testing.T, nsPath string, ip netip.Addr) net.HardwareAddr {
	t.Helper()
	for _, e := range neighbours(t, nsPath, "eth0") {
		if e.IP.Equal(ip.AsSlice()) && e.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE|netlink.NUD_PERMANENT) != 0 {
			return e.HardwareAddr
		}
	}
	return nil
}

func TestOverlayConnectsEndpointsAcrossHosts(t *testing.T) {
	t.Parallel()
	a, b, aIP, bIP := overlayHosts(t, "10.201.1", 0) // default port
	n := overlayNetwork("ovl", "br-o", "10.90.1.0/24", 4242)
	ensureOn(n, a, b)
	ja, jb := a.join(n, "epa", "vha", 2), b.join(n, "epb", "vhb", 3)
	sa, pa, epa := ja.name, ja.path, ja.ep
	sb, epb := jb.name, jb.ep
	// A remote nothing answers for: its ARP can only be answered by the
	// proxy on A's own VXLAN device.
	ghost := datapath.Remote{Addr: netip.MustParseAddr("10.90.1.99"), MAC: net.HardwareAddr{0x02, 0x42, 0, 0, 0, 0x99}, Node: bIP}
	toB, toA := remoteOf(epb, bIP), remoteOf(epa, aIP)
	a.setRemotes(n, toB, ghost)
	b.setRemotes(n, toA)

	v := a.vxlan("fvx4242")
	checkOverlayDevice(t, v, a.link("br-o"), aIP)
	a.checkTunnelEntries("fvx4242", toB, ghost)
	b.checkTunnelEntries("fvx4242", toA)
	checkFastARP(t, pa)

	checkTrafficBothWays(t, ja, jb)
	if mac := sandboxNeighbour(t, pa, toB.Addr); !slices.Equal(mac, epb.MAC) {
		t.Errorf("sandbox A resolved %s to %s, want %s", toB.Addr, mac, epb.MAC)
	}
	_ = ping(sa, ghost.Addr.String()) // no one answers the echo, but ARP is
	if mac := sandboxNeighbour(t, pa, ghost.Addr); !slices.Equal(mac, ghost.MAC) {
		t.Errorf("sandbox A resolved %s to %s, want %s from the proxy", ghost.Addr, mac, ghost.MAC)
	}

	// Ensuring again changes nothing, the device least of all.
	index := v.Index
	for range 2 {
		a.ensureNetwork(n)
		a.ensureEndpoint(n, epa)
		a.setRemotes(n, ghost, toB)
	}
	if got := a.link("fvx4242").Attrs().Index; got != index {
		t.Errorf("VXLAN device recreated (index %d -> %d) although nothing changed", index, got)
	}
	a.checkTunnelEntries("fvx4242", toB, ghost)
	mustPing(t, sa, "10.90.1.3")
	st := a.dp.Status(ctx)
	if want := "overlay ovl: fvx4242 (VNI 4242, port 4789), 2 remotes"; !slices.Contains(st.Details, want) {
		t.Errorf("status details %q lack %q", st.Details, want)
	}

	// A remote whose MAC changed is replaced.
	ghost2 := ghost
	ghost2.MAC = net.HardwareAddr{0x02, 0x42, 0, 0, 0, 0x98}
	a.setRemotes(n, toB, ghost2)
	a.checkTunnelEntries("fvx4242", toB, ghost2)

	// No remotes: the entries are gone and B is out of reach both ways.
	a.setRemotes(n)
	a.checkTunnelEntries("fvx4242")
	mustNotPing(t, sa, "10.90.1.3")
	mustNotPing(t, sb, "10.90.1.2")
	if got, err := dial(pa, "tcp4", "10.90.1.3:7000"); err == nil {
		t.Errorf("A reached B without remotes (seen as %s)", got)
	}
	// And back.
	a.setRemotes(n, toB)
	mustPing(t, sa, "10.90.1.3")
	if got := a.link("fvx4242").Attrs().Index; got != index {
		t.Errorf("VXLAN device recreated by SetRemotes (index %d -> %d)", index, got)
	}

	// DeleteNetwork takes the device with the bridge.
	if err := a.dp.DeleteNetwork(ctx, n); err != nil {
		t.Fatal(err)
	}
	if !a.linkGone("fvx4242") || !a.linkGone("br-o") {
		t.Error("DeleteNetwork left the VXLAN device or the bridge")
	}
}

// checkTrafficBothWays: ja's and jb's sandboxes ping each other, and each
// reaches a TCP server of the other, which sees its real address.
func checkTrafficBothWays(t *testing.T, ja, jb joined) {
	t.Helper()
	a, b := ja.ep.Addr.Addr().String(), jb.ep.Addr.Addr().String()
	mustPing(t, ja.name, b)
	mustPing(t, jb.name, a)
	serveTCP(t, jb.path, ":7000")
	serveTCP(t, ja.path, ":7001")
	if got := mustDial(t, ja.path, "tcp4", b+":7000"); got != a {
		t.Errorf("B's endpoint saw A's as %s, want %s", got, a)
	}
	if got := mustDial(t, jb.path, "tcp4", a+":7001"); got != b {
		t.Errorf("A's endpoint saw B's as %s, want %s", got, b)
	}
}

// checkOverlayDevice: v is the VXLAN device of the "ovl" test network
// (VNI 4242, default port) on br, sending from local, with learning off
// and the ARP proxy on.
func checkOverlayDevice(t *testing.T, v *netlink.Vxlan, br netlink.Link, local netip.Addr) {
	t.Helper()
	switch {
	case v.VxlanId != 4242 || v.Port != datapath.DefaultTunnelPort || !v.SrcAddr.Equal(local.AsSlice()):
		t.Errorf("vxlan VNI %d port %d local %s", v.VxlanId, v.Port, v.SrcAddr)
	case v.Learning || !v.Proxy || v.L2miss || v.L3miss || v.FlowBased || (v.Group != nil && !v.Group.IsUnspecified()):
		t.Errorf("vxlan learning %v proxy %v l2miss %v l3miss %v external %v group %s", v.Learning, v.Proxy, v.L2miss, v.L3miss, v.FlowBased, v.Group)
	case v.MTU != 1450 || v.MasterIndex != br.Attrs().Index || !plumb.IsUp(v) || v.Alias != vxlanAlias("ovl"):
		t.Errorf("vxlan MTU %d master %d (bridge %d) up %v alias %q", v.MTU, v.MasterIndex, br.Attrs().Index, plumb.IsUp(v), v.Alias)
	}
}

// checkFastARP: an overlay sandbox (at nsPath) retries ARP fast (a peer's
// proxy entry may arrive just after the first request).
func checkFastARP(t *testing.T, nsPath string) {
	t.Helper()
	if err := fabricns.Do(nsPath, func() error {
		for name, want := range map[string]string{"retrans_time_ms": "100", "mcast_solicit": "10"} {
			got, err := os.ReadFile("/proc/sys/net/ipv4/neigh/eth0/" + name)
			if err != nil || strings.TrimSpace(string(got)) != want {
				return fmt.Errorf("sandbox eth0 %s = %q (%v), want %s", name, got, err, want)
			}
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}

// skipped is how many remotes the datapath has skipped, all reasons.
func (l *lab) skipped() uint64 {
	l.t.Helper()
	m, err := l.dp.Metrics()
	if err != nil {
		l.t.Fatal(err)
	}
	var n uint64
	for _, c := range m.SkippedRemotes {
		n += c
	}
	return n
}

func TestOverlayRefusesBadInput(t *testing.T) {
	t.Parallel()
	n := overlayNetwork("ovb", "br-b", "10.90.3.0/24", 9)

	checkRefusedWithoutTunnel(t, n)

	l := bareLab(t)
	local := netip.MustParseAddr("10.201.3.1")
	l.dp = l.open(Options{Tunnel: datapath.Tunnel{Local: local}})
	// SetRemotes before the network exists is an error, not a crash.
	good := datapath.Remote{Addr: netip.MustParseAddr("10.90.3.7"), MAC: net.HardwareAddr{2, 0, 0, 0, 0, 7}, Node: netip.MustParseAddr("10.201.3.2")}
	if err := l.dp.SetRemotes(ctx, n, []datapath.Remote{good}); err == nil || !strings.Contains(err.Error(), "ensure the network first") {
		t.Errorf("SetRemotes before EnsureNetwork: %v", err)
	}
	l.ensureNetwork(n)
	l.setRemotes(n, good)

	with := func(f func(r *datapath.Remote)) []datapath.Remote {
		r := good
		r.MAC = slices.Clone(good.MAC)
		f(&r)
		return []datapath.Remote{good, r}
	}
	bad := map[string][]datapath.Remote{
		"address outside subnet": with(func(r *datapath.Remote) { r.Addr = netip.MustParseAddr("10.90.4.7") }),
		"IPv6 address":           with(func(r *datapath.Remote) { r.Addr = netip.MustParseAddr("fd00::7") }),
		"no address":             with(func(r *datapath.Remote) { r.Addr = netip.Addr{} }),
		"gateway":                with(func(r *datapath.Remote) { r.Addr = n.Gateway }),
		"broadcast":              with(func(r *datapath.Remote) { r.Addr = netip.MustParseAddr("10.90.3.255") }),
		"duplicate address":      with(func(r *datapath.Remote) { r.MAC[5] = 8 }),
		"short MAC":              with(func(r *datapath.Remote) { r.Addr, r.MAC = netip.MustParseAddr("10.90.3.8"), r.MAC[:5] }),
		"multicast MAC":          with(func(r *datapath.Remote) { r.Addr, r.MAC[0] = netip.MustParseAddr("10.90.3.8"), 1 }),
		"zero MAC":               with(func(r *datapath.Remote) { r.Addr, r.MAC = netip.MustParseAddr("10.90.3.8"), make(net.HardwareAddr, 6) }),
		"no node":                with(func(r *datapath.Remote) { r.Addr, r.MAC[5], r.Node = netip.MustParseAddr("10.90.3.8"), 8, netip.Addr{} }),
		"IPv6 node": with(func(r *datapath.Remote) {
			r.Addr, r.MAC[5], r.Node = netip.MustParseAddr("10.90.3.8"), 8, netip.MustParseAddr("fd00::2")
		}),
		"multicast node": with(func(r *datapath.Remote) {
			r.Addr, r.MAC[5], r.Node = netip.MustParseAddr("10.90.3.8"), 8, netip.MustParseAddr("239.1.1.1")
		}),
		"this host as node": with(func(r *datapath.Remote) { r.Addr, r.MAC[5], r.Node = netip.MustParseAddr("10.90.3.8"), 8, local }),
		"MAC on two nodes": with(func(r *datapath.Remote) {
			r.Addr, r.Node = netip.MustParseAddr("10.90.3.8"), netip.MustParseAddr("10.201.3.3")
		}),
	}
	// One bad entry is skipped, counted once however often it is set
	// again, and the good one beside it is programmed.
	for name, remotes := range bad {
		before := l.skipped()
		for range 2 {
			if err := l.dp.SetRemotes(ctx, n, remotes); err != nil {
				t.Errorf("%s: SetRemotes: %v, want the bad entry skipped", name, err)
			}
		}
		if got := l.skipped() - before; got != 1 {
			t.Errorf("%s: %d skips counted, want 1", name, got)
		}
		l.checkTunnelEntries("fvx9", good)
		if err := l.dp.SetRemotes(ctx, n, []datapath.Remote{good}); err != nil {
			t.Fatal(err)
		}
	}
	bridgeNet := network("brn", "br-n", "10.90.5.0/24", false)
	if err := l.dp.SetRemotes(ctx, bridgeNet, nil); !errors.Is(err, datapath.ErrInvalid) {
		t.Errorf("SetRemotes on a bridge network: %v, want ErrInvalid", err)
	}
	err := l.dp.Sync(ctx, datapath.State{Networks: []datapath.Network{n}, Remotes: map[string][]datapath.Remote{n.ID: bad["multicast MAC"]}})
	if err != nil {
		t.Errorf("Sync with a bad remote: %v, want it skipped", err)
	}
	l.checkTunnelEntries("fvx9", good)
	checkForeignVXLANRefused(t, l)
}

// checkRefusedWithoutTunnel: a datapath without a tunnel address refuses
// overlay network n before anything is made.
func checkRefusedWithoutTunnel(t *testing.T, n datapath.Network) {
	t.Helper()
	plain := newLab(t)
	if err := plain.dp.EnsureNetwork(ctx, n); !errors.Is(err, datapath.ErrInvalid) || !strings.Contains(err.Error(), "Tunnel.Local") {
		t.Errorf("EnsureNetwork without a tunnel address: %v, want ErrInvalid naming Tunnel.Local", err)
	}
	if !plain.linkGone("br-b") || !plain.linkGone("fvx9") {
		t.Error("refused overlay network left links behind")
	}
	if err := plain.dp.Sync(ctx, datapath.State{Networks: []datapath.Network{n}}); !errors.Is(err, datapath.ErrInvalid) {
		t.Errorf("Sync without a tunnel address: %v, want ErrInvalid", err)
	}
	if !plain.linkGone("fvx9") {
		t.Error("refused overlay network left a VXLAN device behind")
	}
}

// checkForeignVXLANRefused: a link of a VXLAN device's name that fabric
// did not make is refused, not taken.
func checkForeignVXLANRefused(t *testing.T, l *lab) {
	t.Helper()
	other := overlayNetwork("ovc", "br-c", "10.90.6.0/24", 10)
	la := netlink.NewLinkAttrs()
	la.Name = "fvx10"
	if err := l.hostNL.LinkAdd(&netlink.Vxlan{LinkAttrs: la, VxlanId: 10, Port: 4790}); err != nil {
		t.Fatal(err)
	}
	if err := l.dp.EnsureNetwork(ctx, other); !errors.Is(err, datapath.ErrInvalid) {
		t.Errorf("EnsureNetwork over a foreign fvx10: %v, want ErrInvalid", err)
	}
	if v := l.vxlan("fvx10"); v.Port != 4790 {
		t.Errorf("foreign device was changed: port %d", v.Port)
	}
	if !l.linkGone("br-c") {
		t.Error("refused network left its bridge")
	}
}
