package kernel

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns/kfeat"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// switchL2 is the lab's shared L2 in miniature: a namespace with a Linux
// bridge (sw0) into which test hosts plug their interfaces by veth. The
// bridge does not filter VLANs, so tagged frames of every VLAN pass, like
// a trunk port; separating VLANs is the hosts' 802.1q sub-interfaces' job.
type switchL2 struct {
	t     *testing.T
	name  string
	nl    *netlink.Handle
	br    netlink.Link
	ports int
}

func newSwitch(t *testing.T) *switchL2 {
	t.Helper()
	netnstest.RequireRoot(t)
	name, path := netnstest.New(t, "fkw")
	h := netnstest.Handle(t, path)
	t.Cleanup(h.Close)
	la := netlink.NewLinkAttrs()
	la.Name = "sw0"
	la.Flags = net.FlagUp
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
		t.Fatalf("create switch bridge: %v", err)
	}
	br, err := h.LinkByName("sw0")
	if err != nil {
		t.Fatal(err)
	}
	return &switchL2{t: t, name: name, nl: h, br: br}
}

// lanOfTwo plugs two new hosts into a new switch and ensures n on both.
func lanOfTwo(t *testing.T, n datapath.Network) (sw *switchL2, h1, h2 *lab) {
	t.Helper()
	sw = newSwitch(t)
	h1, h2 = sw.host(), sw.host()
	ensureOn(n, h1, h2)
	return sw, h1, h2
}

// host returns a new lab (host namespace + datapath) whose eth1 is
// plugged into the switch.
func (s *switchL2) host() *lab { return s.hostWith(Options{}) }

// hostWith is host with a datapath opened with opts.
func (s *switchL2) hostWith(opts Options) *lab {
	s.t.Helper()
	l := bareLab(s.t)
	l.dp = l.open(opts)
	s.plug(l, "eth1")
	return l
}

// plug connects a new interface ifName, up and without address, of l's
// host namespace to the switch; it returns the switch-side port name.
func (s *switchL2) plug(l *lab, ifName string) string {
	s.t.Helper()
	s.ports++
	port := fmt.Sprintf("sp%d", s.ports)
	hns, err := netns.GetFromPath(l.hostPath)
	if err != nil {
		s.t.Fatal(err)
	}
	defer hns.Close()
	la := netlink.NewLinkAttrs()
	la.Name = port
	la.Flags = net.FlagUp
	la.MasterIndex = s.br.Attrs().Index
	if err := s.nl.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: ifName, PeerNamespace: netlink.NsFd(hns), PeerTxQLen: -1}); err != nil {
		s.t.Fatalf("plug %s into the switch: %v", ifName, err)
	}
	if err := l.hostNL.LinkSetUp(l.link(ifName)); err != nil {
		s.t.Fatal(err)
	}
	return port
}

// setHairpin turns reflective relay on a switch port on or off: what a
// VEPA-capable switch does.
func (s *switchL2) setHairpin(port string, on bool) {
	s.t.Helper()
	p, err := s.nl.LinkByName(port)
	if err != nil {
		s.t.Fatal(err)
	}
	if err := s.nl.LinkSetHairpin(p, on); err != nil {
		s.t.Fatal(err)
	}
}

// parentNet describes a macvlan or ipvlan network; the gateway is the
// subnet's first address (nothing answers it: a LAN router in real life).
func parentNet(id, driver, parent, mode, subnet string) datapath.Network {
	p := netip.MustParsePrefix(subnet)
	return datapath.Network{ID: id, Name: id, Driver: driver, Subnet: p, Gateway: p.Addr().Next(), Parent: parent, Mode: mode}
}

// child is an endpoint's link as seen inside its sandbox.
func child(t *testing.T, nsPath, ifName string) netlink.Link {
	t.Helper()
	h := netnstest.Handle(t, nsPath)
	defer h.Close()
	link, err := h.LinkByName(ifName)
	if err != nil {
		t.Fatalf("%s in %s: %v", ifName, nsPath, err)
	}
	return link
}

func childGone(t *testing.T, nsPath, ifName string) bool {
	t.Helper()
	h := netnstest.Handle(t, nsPath)
	defer h.Close()
	_, err := h.LinkByName(ifName)
	return plumb.IsNotFound(err)
}

// linksBeyondLAN lists the host's links other than lo and its switch
// port eth1, as "name (kind)".
func (l *lab) linksBeyondLAN() []string {
	l.t.Helper()
	all, err := l.hostNL.LinkList()
	if err != nil {
		l.t.Fatal(err)
	}
	var extra []string
	for _, link := range all {
		if name := link.Attrs().Name; name != "lo" && name != "eth1" {
			extra = append(extra, name+" ("+link.Type()+")")
		}
	}
	return extra
}

func (l *lab) addAddr(ifName, cidr string) {
	l.t.Helper()
	if err := l.hostNL.AddrAdd(l.link(ifName), mustAddr(cidr)); err != nil {
		l.t.Fatalf("add %s to %s: %v", cidr, ifName, err)
	}
}

func (l *lab) ensureNetworkErr(n datapath.Network) error {
	return l.dp.EnsureNetwork(ctx, n)
}

// requireLinkKind skips the test, saying "needs 8021q" or "needs
// ipvlan", on a kernel without that kind of link: some are built without
// 802.1q or ipvlan (make test-kernels runs these tests on kernels with).
func requireLinkKind(t *testing.T, kind string) {
	t.Helper()
	netnstest.RequireRoot(t)
	f, ok := map[string]kfeat.Feature{"vlan": kfeat.VLAN, "ipvlan": kfeat.IPvlan, "ipvlan-l3s": kfeat.IPvlanL3S}[kind]
	if !ok {
		t.Fatalf("no probe for %s", kind)
	}
	kfeat.Need(t, f)
}

// routes returns `ip -4 route show ARGS` in the named namespace, trimmed.
func routes(t *testing.T, nsName string, args ...string) string {
	t.Helper()
	return strings.TrimSpace(netnstest.Run(t, nsName, append([]string{"ip", "-4", "route", "show"}, args...)...))
}
