package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/cni"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// servePod runs the test's TCP/UDP responder on port 80 in a pod namespace.
func (c *cniHost) servePod(t *testing.T, podName, podPath, id string) {
	t.Helper()
	self, _ := os.Executable()
	cmd := netnstest.Cmd(podName, "env", "FABRIC_E2E_HELPER=serve", "FABRIC_SANDBOX="+id, self, "80")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	c.waitListening(podPath, 80)
}

// TestCNIAddCheckDel drives the plugin through libcni for every spec
// version: ADD gives an address from the fabric network with its gateway
// and default route, the interface in the runtime's namespace, a
// published hostPort reachable from outside the host and the pod
// reachable from another pod; the attachment shows in `sandbox ls` as
// owned by CNI with its container ID; CHECK passes; DEL removes it all,
// and a second DEL (and one with an empty netns, as containerd sends)
// succeeds.
func TestCNIAddCheckDel(t *testing.T) {
	c := newCNIHost(t)
	for i, v := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) { cniAddCheckDel(t, c, v, 18080+i) })
	}
}

// TestCNIEBPFDatapath: the same on the eBPF datapath (published ports in
// its own NAT, pod to pod by redirect).
func TestCNIEBPFDatapath(t *testing.T) {
	c := newCNIHost(t, "--datapath", "ebpf")
	cniAddCheckDel(t, c, "1.0.0", 18090)
}

func cniAddCheckDel(t *testing.T, c *cniHost, v string, hostPort int) {
	l := c.confList(t, v)
	podA, pathA := podNS(t)
	podB, pathB := podNS(t)
	rtA := &libcni.RuntimeConf{ContainerID: cniTestID(t, "a"), NetNS: pathA, IfName: "eth0",
		CapabilityArgs: map[string]any{"portMappings": []map[string]any{{"hostPort": hostPort, "containerPort": 80, "protocol": "tcp"}}}}
	rtB := &libcni.RuntimeConf{ContainerID: cniTestID(t, "b"), NetNS: pathB, IfName: "net1",
		CapabilityArgs: map[string]any{"mac": "02:aa:bb:cc:dd:ee"}}
	resA, err := c.add(l, rtA)
	if err != nil {
		t.Fatalf("ADD a: %v", err)
	}
	if _, err := c.add(l, rtB); err != nil {
		t.Fatalf("ADD b: %v", err)
	}
	if resA.Version() != v {
		t.Errorf("result version %s, want %s", resA.Version(), v)
	}
	ipA := checkAddResult(t, resA, pathA)
	if out := run(t, "ip", "-n", podA, "route", "show", "default"); !strings.Contains(out, "via 10.77.0.1") {
		t.Errorf("pod's default route: %q", out)
	}
	if out := run(t, "ip", "-n", podB, "link", "show", "net1"); !strings.Contains(out, "02:aa:bb:cc:dd:ee") {
		t.Errorf("pod b's net1 does not have the MAC asked for: %q", out)
	}
	c.servePod(t, podA, pathA, "podA")
	if !ping(podB, ipA) {
		t.Errorf("pod b cannot ping pod a at %s", ipA)
	}
	if out := c.mustConnect(c.outside, "tcp", hostUplinkIP+":"+itoa(hostPort)); !strings.HasPrefix(out, "podA ") {
		t.Errorf("hostPort %d from outside: %q", hostPort, out)
	}
	sbs := c.cniSandboxes(t)
	if len(sbs) != 2 {
		t.Fatalf("CNI sandboxes: %+v", sbs)
	}
	ls := c.mustCtl("sandbox", "ls")
	if !strings.Contains(ls, "cni:"+rtA.ContainerID[:12]) {
		t.Errorf("sandbox ls does not show the attachment as cni:CONTAINER:\n%s", ls)
	}
	if err := c.check(l, rtA); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	for _, rt := range []*libcni.RuntimeConf{rtA, rtB} {
		if err := c.del(l, rt); err != nil {
			t.Fatalf("DEL %s: %v", rt.ContainerID, err)
		}
	}
	if slices.Contains(links(t, podA), "eth0") || slices.Contains(links(t, podB), "net1") {
		t.Errorf("interfaces left after DEL: %v %v", links(t, podA), links(t, podB))
	}
	if sbs := c.cniSandboxes(t); len(sbs) != 0 {
		t.Errorf("sandboxes left after DEL: %+v", sbs)
	}
	if err := c.del(l, rtA); err != nil {
		t.Errorf("second DEL: %v", err)
	}
	empty := *rtA
	empty.NetNS = ""
	if err := c.del(l, &empty); err != nil {
		t.Errorf("DEL with empty netns: %v", err)
	}
	if _, err := c.connect(c.outside, "tcp", hostUplinkIP+":"+itoa(hostPort)); err == nil {
		t.Errorf("hostPort %d still answers after DEL", hostPort)
	}
	// With the agent up, nothing was queued: the DELs were answered.
	if q, _ := os.ReadDir(api.RemovalQueueDir(c.socket)); len(q) != 0 {
		t.Errorf("removals queued while the agent was up: %v", q)
	}
}

// checkAddResult: ADD's result for eth0 in the pod at path has one
// 10.77.0.x/24 address via 10.77.0.1 on that interface, the default route
// and the embedded resolver; it returns the address.
func checkAddResult(t *testing.T, res types.Result, path string) string {
	t.Helper()
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.IPs) != 1 || !strings.HasPrefix(r.IPs[0].Address.String(), "10.77.0.") || r.IPs[0].Gateway.String() != "10.77.0.1" {
		t.Fatalf("result IPs %+v: want one 10.77.0.x/24 via 10.77.0.1", r.IPs)
	}
	if idx := r.IPs[0].Interface; idx == nil || r.Interfaces[*idx].Sandbox != path || r.Interfaces[*idx].Name != "eth0" {
		t.Errorf("result interfaces %+v: the IP's interface must be eth0 in %s", r.Interfaces, path)
	}
	if len(r.Routes) != 1 || r.Routes[0].Dst.String() != "0.0.0.0/0" {
		t.Errorf("result routes %+v: want the default route", r.Routes)
	}
	if !slices.Contains(r.DNS.Nameservers, "127.0.0.11") {
		t.Errorf("result DNS %+v: want the embedded resolver", r.DNS)
	}
	return r.IPs[0].Address.IP.String()
}

// TestCNIDelAfterNamespaceGone: the runtime removed the namespace before
// DEL (or the container died): DEL still succeeds and nothing is left.
func TestCNIDelAfterNamespaceGone(t *testing.T) {
	c := newCNIHost(t)
	l := c.confList(t, "1.0.0")
	pod, rt := podConf(t, "x")
	if _, err := c.add(l, rt); err != nil {
		t.Fatal(err)
	}
	host := c.cniSandboxes(t)[0].Endpoints[0].HostIfName
	netnstest.Remove(pod)
	if err := c.del(l, rt); err != nil {
		t.Fatalf("DEL after the namespace is gone: %v", err)
	}
	if err := c.del(l, rt); err != nil {
		t.Fatalf("second DEL: %v", err)
	}
	if sbs := c.cniSandboxes(t); len(sbs) != 0 {
		t.Errorf("sandboxes left: %+v", sbs)
	}
	if slices.Contains(links(t, c.ns), host) {
		t.Errorf("host side %s left", host)
	}
}

// TestCNIChainTuningBandwidth chains Debian's tuning and bandwidth after
// fabric-cni: both get a prevResult they can use (tuning finds the pod's
// interface, bandwidth the host side of the veth), and DEL of the chain
// removes what each added.
func TestCNIChainTuningBandwidth(t *testing.T) {
	for _, p := range []string{"tuning", "bandwidth"} {
		if _, err := os.Stat(filepath.Join(debianCNI, p)); err != nil {
			t.Skipf("skipping: needs Debian's %s plugin in %s (make deps-cni)", p, debianCNI)
		}
	}
	c := newCNIHost(t)
	l := c.confList(t, "1.0.0",
		map[string]any{"type": "tuning", "sysctl": map[string]string{"net.ipv4.conf.eth0.arp_notify": "1"}},
		map[string]any{"type": "bandwidth", "ingressRate": 8000000, "ingressBurst": 100000, "egressRate": 8000000, "egressBurst": 100000},
	)
	pod, rt := podConf(t, "x")
	if _, err := c.add(l, rt); err != nil {
		t.Fatalf("ADD through the chain: %v", err)
	}
	if v := strings.TrimSpace(run(t, "ip", "netns", "exec", pod, "cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify")); v != "1" {
		t.Errorf("tuning did not set arp_notify: %q", v)
	}
	hostIf := c.cniSandboxes(t)[0].Endpoints[0].HostIfName
	if out := run(t, "tc", "-n", c.ns, "qdisc", "show", "dev", hostIf); !strings.Contains(out, "tbf") {
		t.Errorf("bandwidth put no tbf on the host side %s: %q", hostIf, out)
	}
	if err := c.check(l, rt); err != nil {
		t.Errorf("CHECK through the chain: %v", err)
	}
	if err := c.del(l, rt); err != nil {
		t.Fatalf("DEL through the chain: %v", err)
	}
	for _, name := range links(t, c.ns) {
		if strings.HasPrefix(name, "bwp") {
			t.Errorf("bandwidth's ifb %s left", name)
		}
	}
	if sbs := c.cniSandboxes(t); len(sbs) != 0 {
		t.Errorf("sandboxes left: %+v", sbs)
	}
}

// TestCNIGC: GC removes the CNI attachments of this network the runtime no
// longer lists, and leaves the listed ones and fabric's own sandboxes.
func TestCNIGC(t *testing.T) {
	c := newCNIHost(t)
	l := c.confList(t, "1.1.0")
	_, rtA := podConf(t, "a")
	_, rtB := podConf(t, "b")
	for _, rt := range []*libcni.RuntimeConf{rtA, rtB} {
		if _, err := c.add(l, rt); err != nil {
			t.Fatal(err)
		}
	}
	own := c.name("own")
	c.mustCtl("run", "-d", "--name", own, "--network", c.network, "--", "sleep", "300")
	if err := c.gc(l, []types.GCAttachment{{ContainerID: rtA.ContainerID, IfName: "eth0"}}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	sbs := c.cniSandboxes(t)
	if len(sbs) != 1 || sbs[0].ContainerID != rtA.ContainerID {
		t.Fatalf("after GC: %+v, want only %s", sbs, rtA.ContainerID)
	}
	c.sandbox(own) // still there
	if err := c.del(l, rtA); err != nil {
		t.Fatal(err)
	}
}

// TestCNIAgentDown: STATUS follows the agent; with the agent down ADD
// fails at once with "try again later" (11) and DEL is queued, then
// carried out when the agent is back.
func TestCNIAgentDown(t *testing.T) {
	c := newCNIHost(t)
	l := c.confList(t, "1.1.0")
	if err := c.status(l); err != nil {
		t.Fatalf("STATUS with the agent up: %v", err)
	}
	pod, rt := podConf(t, "x")
	if _, err := c.add(l, rt); err != nil {
		t.Fatal(err)
	}
	c.stop()
	if err := c.status(l); cniCode(err) != types.ErrPluginNotAvailable {
		t.Errorf("STATUS with the agent down: %v, want code 50", err)
	}
	_, rtY := podConf(t, "y")
	t0 := time.Now()
	_, err := c.add(l, rtY)
	if cniCode(err) != types.ErrTryAgainLater || time.Since(t0) > 10*time.Second {
		t.Errorf("ADD with the agent down: %v after %v, want code 11 at once", err, time.Since(t0))
	}
	if err := c.del(l, rt); err != nil {
		t.Fatalf("DEL with the agent down: %v", err)
	}
	queued := filepath.Join(api.RemovalQueueDir(c.socket), cni.SandboxName(c.network, rt.ContainerID, "eth0")+".json")
	if _, err := os.Stat(queued); err != nil {
		t.Fatalf("DEL not queued: %v", err)
	}
	if !slices.Contains(links(t, pod), "eth0") {
		t.Fatalf("eth0 gone before the agent is back: the test shows nothing")
	}
	c.start()
	c.waitNoCNISandbox(t, 20*time.Second)
	if slices.Contains(links(t, pod), "eth0") {
		t.Errorf("eth0 still in the pod after the queued DEL ran")
	}
	if _, err := os.Stat(queued); !os.IsNotExist(err) {
		t.Errorf("queue file left: %v", err)
	}
	if err := c.status(l); err != nil {
		t.Errorf("STATUS with the agent back: %v", err)
	}
}

// TestCNIAgentRestart: an agent killed with -9 and started again still
// has the attachment as CNI's (CHECK passes, the pod's traffic flows) and
// DEL removes it.
func TestCNIAgentRestart(t *testing.T) {
	c := newCNIHost(t)
	l := c.confList(t, "1.1.0")
	pod, rt := podConf(t, "x")
	podB, rtB := podConf(t, "y")
	res, err := c.add(l, rt)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.add(l, rtB); err != nil {
		t.Fatal(err)
	}
	r, _ := types100.NewResultFromResult(res)
	c.kill9()
	c.start()
	sbs := c.cniSandboxes(t)
	if len(sbs) != 2 {
		t.Fatalf("after a restart: %+v", sbs)
	}
	if err := c.check(l, rt); err != nil {
		t.Errorf("CHECK after a restart: %v", err)
	}
	if !ping(podB, r.IPs[0].Address.IP.String()) {
		t.Errorf("pod b cannot reach pod a after the restart")
	}
	for _, x := range []*libcni.RuntimeConf{rt, rtB} {
		if err := c.del(l, x); err != nil {
			t.Fatal(err)
		}
	}
	if slices.Contains(links(t, pod), "eth0") || len(c.cniSandboxes(t)) != 0 {
		t.Errorf("left after DEL: %v %+v", links(t, pod), c.cniSandboxes(t))
	}
}

// TestCNIStatusUnhealthyNetwork: STATUS says "limited connectivity" (51)
// while the network's macvlan parent is missing, and "not available" (50)
// for a network that does not exist.
func TestCNIStatusUnhealthyNetwork(t *testing.T) {
	c := newCNIHost(t)
	run(t, "ip", "-n", c.ns, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")
	run(t, "ip", "-n", c.ns, "link", "set", "eth1", "up")
	lan := c.name("lan")
	c.mustCtl("network", "create", "-d", "macvlan", "--subnet", "10.60.0.0/24", "-o", "parent=eth1", lan)
	l := c.confList(t, "1.1.0")
	b := strings.Replace(string(l.Bytes), c.network, lan, -1)
	lanList, err := libcni.ConfListFromBytes([]byte(b))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.status(lanList); err != nil {
		t.Fatalf("STATUS with the parent present: %v", err)
	}
	run(t, "ip", "-n", c.ns, "link", "del", "eth1")
	netnstest.Until(t, 15*time.Second, "STATUS with the parent gone", func() error {
		if err := c.status(lanList); cniCode(err) != types.ErrLimitedConnectivity {
			return fmt.Errorf("%v, want code 51", err)
		}
		return nil
	})
	gone := strings.Replace(string(l.Bytes), c.network, c.name("nope"), -1)
	goneList, err := libcni.ConfListFromBytes([]byte(gone))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.status(goneList); cniCode(err) != types.ErrPluginNotAvailable || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("STATUS for a missing network: %v, want code 50", err)
	}
}
