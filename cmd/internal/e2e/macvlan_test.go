package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns/kfeat"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// lan joins hosts to one L2 segment: a switch namespace with a Linux
// bridge, and an eth1 in every host plugged into it (no address: it is a
// parent for macvlan/ipvlan).
type lan struct {
	t  *testing.T
	sw string
	n  int
}

func newLAN(t *testing.T, hosts ...*host) *lan {
	t.Helper()
	l := &lan{t: t}
	l.sw, _ = netnstest.New(t, "fsw")
	run(t, "ip", "-n", l.sw, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", l.sw, "link", "set", "br0", "up")
	for _, h := range hosts {
		l.plug(h)
	}
	return l
}

// plug (re)creates eth1 in h, cabled to the switch.
func (l *lan) plug(h *host) { l.plugAs(h, "eth1") }

// newHostTwiceOnLAN is a host with eth1 and eth2 both cabled to one
// switch: two parents for macvlan networks.
func newHostTwiceOnLAN(t *testing.T) *host {
	t.Helper()
	h := newHost(t)
	newLAN(t, h).plugAs(h, "eth2")
	return h
}

// plugAs cables another interface of h to the switch.
func (l *lan) plugAs(h *host, ifname string) {
	l.t.Helper()
	l.n++
	port := fmt.Sprintf("p%d", l.n)
	run(l.t, "ip", "link", "add", ifname, "netns", h.ns, "type", "veth", "peer", "name", port, "netns", l.sw)
	run(l.t, "ip", "-n", l.sw, "link", "set", port, "master", "br0", "up")
	run(l.t, "ip", "-n", h.ns, "link", "set", ifname, "up")
}

// requireKernel skips the test ("needs 8021q", "needs ipvlan") unless
// the kernel can create links of kind: some are built without 8021q or
// ipvlan (make test-kernels runs these tests on kernels that have them).
func requireKernel(t *testing.T, kind string) {
	t.Helper()
	if kind == "vlan" {
		kfeat.Need(t, kfeat.VLAN)
	} else {
		kfeat.Need(t, kfeat.IPvlan)
	}
}

func TestMacvlanAcrossHosts(t *testing.T) {
	h1, h2 := newHost(t), newHost(t)
	newLAN(t, h1, h2)
	// Plain macvlan on eth1: sandboxes on different hosts talk.
	for _, h := range []*host{h1, h2} {
		h.mustCtl("network", "create", "-d", "macvlan", "--subnet", "10.60.0.0/24", "--gateway", "10.60.0.1", "-o", "parent=eth1", "lan")
	}
	a, b := h1.name("a"), h2.name("b")
	h1.serve(a, "--network", "lan", "--ip", "10.60.0.11")
	h2.mustCtl("run", "-d", "--name", b, "--network", "lan", "--ip", "10.60.0.12", "--", "sleep", "300")
	if got := h2.mustConnect(b, "tcp", "10.60.0.11:80"); !strings.HasPrefix(got, a+" 10.60.0.12:") {
		t.Fatalf("macvlan across hosts: %q", got)
	}
	// A second network on the same parent is refused, with a hint.
	_, errOut, code := h1.ctl("network", "create", "-d", "macvlan", "--subnet", "10.60.1.0/24", "-o", "parent=eth1", "lan2")
	if code != 1 || !strings.Contains(errOut, "already used") || !strings.Contains(errOut, "eth1.") {
		t.Fatalf("second network on eth1: code %d %q", code, errOut)
	}

}

func TestMacvlanVLANs(t *testing.T) {
	requireKernel(t, "vlan")
	h1, h2, h3 := newHost(t), newHost(t), newHost(t)
	newLAN(t, h1, h2, h3)
	// VLANs: 10 on h1 and h2, 20 on h3 with the same subnet on purpose:
	// only the 802.1q tag keeps h3's sandbox away.
	for _, x := range []struct {
		h   *host
		vid string
	}{{h1, "10"}, {h2, "10"}, {h3, "20"}} {
		x.h.mustCtl("network", "create", "-d", "macvlan", "--subnet", "10.61.0.0/24", "-o", "parent=eth1."+x.vid, "v"+x.vid)
		out := run(t, "ip", "-n", x.h.ns, "-d", "link", "show", "eth1."+x.vid)
		if !strings.Contains(out, "vlan protocol 802.1Q id "+x.vid) || !strings.Contains(out, "alias fabric:") {
			t.Fatalf("eth1.%s on %s: %s", x.vid, x.h.ns, out)
		}
	}
	x, z, y := h1.name("x"), h2.name("z"), h3.name("y")
	h1.serve(x, "--network", "v10", "--ip", "10.61.0.11")
	h2.mustCtl("run", "-d", "--name", z, "--network", "v10", "--ip", "10.61.0.12", "--", "sleep", "300")
	h3.mustCtl("run", "-d", "--name", y, "--network", "v20", "--ip", "10.61.0.13", "--", "sleep", "300")
	if got := h2.mustConnect(z, "tcp", "10.61.0.11:80"); !strings.HasPrefix(got, x) {
		t.Fatalf("VLAN 10 across hosts: %q", got)
	}
	if _, err := h3.connect(y, "tcp", "10.61.0.11:80"); err == nil {
		t.Fatal("a VLAN 20 sandbox reached a VLAN 10 sandbox")
	}
	if ping(y, "10.61.0.12") {
		t.Fatal("a VLAN 20 sandbox pinged a VLAN 10 sandbox")
	}

	// The sub-interface fabric made goes with the network; a user's stays.
	h3.mustCtl("sandbox", "rm", y)
	h3.mustCtl("network", "rm", "v20")
	if out, _ := netnstest.Cmd(h3.ns, "ip", "link", "show", "eth1.20").CombinedOutput(); !strings.Contains(string(out), "does not exist") {
		t.Fatalf("fabric's eth1.20 left after network rm: %s", out)
	}
	run(t, "ip", "-n", h3.ns, "link", "add", "link", "eth1", "name", "eth1.30", "type", "vlan", "id", "30")
	run(t, "ip", "-n", h3.ns, "link", "set", "eth1.30", "up")
	h3.mustCtl("network", "create", "-d", "macvlan", "--subnet", "10.62.0.0/24", "-o", "parent=eth1.30", "v30")
	h3.mustCtl("network", "rm", "v30")
	run(t, "ip", "-n", h3.ns, "link", "show", "eth1.30")
}

func TestMacvlanPrivateMode(t *testing.T) {
	h := newHostTwiceOnLAN(t)
	// bridge mode (eth1): children of one parent talk to each other;
	// private mode (eth2): they cannot.
	h.mustCtl("network", "create", "-d", "macvlan", "--subnet", "10.63.1.0/24", "-o", "parent=eth1", "br")
	h.mustCtl("network", "create", "-d", "macvlan", "--subnet", "10.63.0.0/24", "-o", "parent=eth2", "-o", "macvlan_mode=private", "priv")
	b1, b2, p1, p2 := h.name("b1"), h.name("b2"), h.name("p1"), h.name("p2")
	for _, x := range []struct{ name, net string }{{b1, "br"}, {b2, "br"}, {p1, "priv"}, {p2, "priv"}} {
		h.mustCtl("run", "-d", "--name", x.name, "--network", x.net, "--", "sleep", "300")
	}
	if !ping(b1, h.ip(b2, "br")) {
		t.Fatal("macvlan bridge mode: siblings cannot reach each other")
	}
	if ping(p1, h.ip(p2, "priv")) {
		t.Fatal("macvlan private mode: siblings reached each other")
	}
}

func TestIPvlan(t *testing.T) {
	requireKernel(t, "ipvlan")
	h1, h2 := newHost(t), newHost(t)
	l := newLAN(t, h1, h2)
	l.plugAs(h1, "eth2")
	// ipvlan l2 across hosts.
	for _, h := range []*host{h1, h2} {
		h.mustCtl("network", "create", "-d", "ipvlan", "--subnet", "10.64.0.0/24", "-o", "parent=eth1", "-o", "ipvlan_mode=l2", "ipv")
	}
	i1, i2 := h1.name("i1"), h2.name("i2")
	h1.serve(i1, "--network", "ipv", "--ip", "10.64.0.11")
	h2.mustCtl("run", "-d", "--name", i2, "--network", "ipv", "--ip", "10.64.0.12", "--", "sleep", "300")
	if got := h2.mustConnect(i2, "tcp", "10.64.0.11:80"); !strings.HasPrefix(got, i1) {
		t.Fatalf("ipvlan l2 across hosts: %q", got)
	}
	// ipvlan l3 on one host: routed between its children.
	h1.mustCtl("network", "create", "-d", "ipvlan", "--subnet", "10.65.0.0/24", "-o", "parent=eth2", "-o", "ipvlan_mode=l3", "l3")
	l1, l2 := h1.name("l1"), h1.name("l2")
	h1.serve(l1, "--network", "l3")
	h1.mustCtl("run", "-d", "--name", l2, "--network", "l3", "--", "sleep", "300")
	if got := h1.mustConnect(l2, "tcp", h1.ip(l1, "l3")+":80"); !strings.HasPrefix(got, l1) {
		t.Fatalf("ipvlan l3 on one host: %q", got)
	}
}

func TestMacvlanHostShim(t *testing.T) {
	h := newHostTwiceOnLAN(t)
	h.mustCtl("network", "create", "-d", "macvlan", "--subnet", "10.66.0.0/24", "-o", "parent=eth1", "noshim")
	h.mustCtl("network", "create", "-d", "macvlan", "--subnet", "10.67.0.0/24", "-o", "parent=eth2", "-o", "host_shim=true", "shim")
	a, b := h.name("a"), h.name("b")
	h.serve(a, "--network", "noshim")
	h.serve(b, "--network", "shim")
	// Give the host an address on noshim's parent, as a host on that LAN
	// would have: it still cannot reach its own macvlan children.
	run(t, "ip", "-n", h.ns, "addr", "add", "10.66.0.250/24", "dev", "eth1")
	if _, err := h.connect("", "tcp", h.ip(a, "noshim")+":80"); err == nil {
		t.Fatal("without host_shim the host reached its macvlan sandbox (kernel macvlan should keep them apart)")
	}
	if got := h.mustConnect("", "tcp", h.ip(b, "shim")+":80"); !strings.HasPrefix(got, b) {
		t.Fatalf("host → sandbox through the shim: %q", got)
	}
	var nets []api.Network
	h.ctlJSON(&nets, "network", "inspect", "shim")
	if nets[0].HostShim == "" {
		t.Fatal("inspect does not show the host shim address")
	}
	h.mustCtl("sandbox", "rm", b)
	h.mustCtl("network", "rm", "shim")
	for _, link := range h.links() {
		if strings.Contains(link, "fabric:shim") {
			t.Errorf("left after network rm: %s", link)
		}
	}
}

func TestMacvlanParentLossIsReportedAndRepaired(t *testing.T) {
	h1, h2 := newHost(t), newHost(t)
	l := newLAN(t, h1, h2)
	for _, h := range []*host{h1, h2} {
		h.mustCtl("network", "create", "-d", "macvlan", "--subnet", "10.68.0.0/24", "-o", "parent=eth1", "v9")
	}
	a, b := h1.name("a"), h2.name("b")
	h1.serve(a, "--network", "v9", "--ip", "10.68.0.11")
	h2.mustCtl("run", "-d", "--name", b, "--network", "v9", "--ip", "10.68.0.12", "--", "sleep", "300")
	h2.mustConnect(b, "tcp", "10.68.0.11:80")

	// Unplug h1: eth1 goes, and with it the sandbox's macvlan child.
	run(t, "ip", "-n", h1.ns, "link", "del", "eth1")
	if !netnstest.Poll(5*time.Second, func() bool {
		// status exits 1 while it has warnings: read its JSON anyway.
		out, _, code := h1.ctl("-o", "json", "status")
		var st api.Status
		return code == 1 && json.Unmarshal([]byte(out), &st) == nil &&
			strings.Contains(strings.Join(st.Warnings, "\n"), "network v9 unhealthy")
	}) {
		t.Fatal("status does not report the network whose parent vanished")
	}
	var nets []api.Network
	h1.ctlJSON(&nets, "network", "inspect", "v9")
	if !strings.HasPrefix(nets[0].Health, api.HealthUnhealthy) {
		t.Fatalf("network health %q", nets[0].Health)
	}
	// Plug it back: fabric re-creates the endpoint by itself.
	l.plug(h1)
	if !netnstest.Poll(10*time.Second, func() bool { _, err := h2.connect(b, "tcp", "10.68.0.11:80"); return err == nil }) {
		t.Fatal("sandbox unreachable after the parent came back")
	}
	h1.ctlJSON(&nets, "network", "inspect", "v9")
	if nets[0].Health != api.HealthOK {
		t.Fatalf("health after repair %q", nets[0].Health)
	}
}

func TestMacvlanBadInputChangesNothing(t *testing.T) {
	h := newHost(t)
	newLAN(t, h)
	h.mustCtl("network", "create", "-d", "macvlan", "--subnet", "10.69.0.0/24", "-o", "parent=eth1", "-o", "exclude=10.69.0.2,10.69.0.3", "lan")
	before := h.snapshot()
	x := h.name("x")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"network", "create", "-d", "macvlan", "--subnet", "10.70.0.0/24", x}, "parent"},
		{[]string{"network", "create", "-d", "macvlan", "--subnet", "10.70.0.0/24", "-o", "parent=eth9", x}, "does not exist"},
		{[]string{"network", "create", "-d", "macvlan", "--subnet", "10.70.0.0/24", "-o", "parent=eth9.10", x}, "eth9"},
		{[]string{"network", "create", "-d", "macvlan", "--subnet", "10.70.0.0/24", "-o", "parent=eth1.0", x}, "1 to 4094"},
		{[]string{"network", "create", "-d", "macvlan", "--subnet", "10.70.0.0/24", "-o", "parent=eth1.4095", x}, "1 to 4094"},
		{[]string{"network", "create", "-d", "macvlan", "--subnet", "10.70.0.0/24", "-o", "parent=eth1", x}, "already used"},
		{[]string{"network", "create", "-d", "macvlan", "--subnet", "10.70.0.0/24", "--gateway", "10.71.0.1", "-o", "parent=eth1.11", x}, "gateway"},
		{[]string{"network", "create", "-d", "macvlan", "-o", "parent=eth1.11", x}, "--subnet"},
		{[]string{"network", "create", "-d", "macvlan", "--internal", "--subnet", "10.70.0.0/24", "-o", "parent=eth1.11", x}, "internal"},
		{[]string{"network", "create", "-d", "macvlan", "--subnet", "10.70.0.0/24", "-o", "parent=eth1.11", "-o", "macvlan_mode=hub", x}, "bridge, private"},
		{[]string{"network", "create", "-d", "ipvlan", "--subnet", "10.70.0.0/24", "-o", "parent=eth1.11", "-o", "ipvlan_mode=l4", x}, "l2, l3"},
		{[]string{"network", "create", "-d", "macvlan", "--subnet", "10.70.0.0/24", "-o", "parent=eth1.11", "-o", "exclude=10.80.0.1", x}, "10.80.0.1"},
		{[]string{"network", "create", "-d", "macvlan", "--subnet", "10.70.0.0/24", "-o", "parent=eth1.11", "-o", "bridge_name=b", x}, "unknown option"},
		{[]string{"run", "-d", "--name", x, "--network", "lan", "--ip", "10.69.0.2", "--", "true"}, "10.69.0.2"},
		{[]string{"run", "-d", "--name", x, "--network", "lan", "-p", "80:80", "--", "true"}, "own address"},
	} {
		out, errOut, code := h.ctl(c.args...)
		if code != 1 || !strings.Contains(errOut, c.want) {
			t.Errorf("fabricctl %s: exit %d (want 1), stderr %q should mention %q (stdout %q)", strings.Join(c.args, " "), code, strings.TrimSpace(errOut), c.want, out)
		}
	}
	diffSnapshots(t, "after rejected macvlan requests", before, h.snapshot())
	// Dynamic addresses skip the excluded ones.
	h.mustCtl("run", "-d", "--name", x, "--network", "lan", "--", "sleep", "300")
	if ip := h.ip(x, "lan"); ip == "10.69.0.2" || ip == "10.69.0.3" {
		t.Fatalf("excluded address %s handed out", ip)
	}
}

// On a kernel without 802.1q, a VLAN parent is refused with the reason and
// leaves nothing behind (TestMacvlanVLANs covers kernels that have it).
func TestVLANParentWithoutKernelSupport(t *testing.T) {
	netnstest.RequireRoot(t)
	if kfeat.Have(kfeat.VLAN) == nil {
		t.Skip("skipping: needs a kernel without 8021q (this one has it; TestMacvlanVLANs covers it)")
	}
	h := newHost(t)
	newLAN(t, h)
	before := h.snapshot()
	_, errOut, code := h.ctl("network", "create", "-d", "macvlan", "--subnet", "10.70.0.0/24", "-o", "parent=eth1.10", "v10")
	if code != 1 || !strings.Contains(errOut, "802.1q") {
		t.Fatalf("VLAN parent on a kernel without 802.1q: exit %d %q", code, errOut)
	}
	diffSnapshots(t, "after the refused VLAN network", before, h.snapshot())
}
