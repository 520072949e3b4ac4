package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

func TestDefaultNetworkAndTwoSandboxesTalk(t *testing.T) {
	onDatapathHosts(t, func(t *testing.T, h *host) {
		var nets []api.Network
		h.ctlJSON(&nets, "network", "ls")
		// The kernel datapath's bridge is fabric0; the eBPF datapath has none.
		wantBridge := map[string]string{"kernel": "fabric0", "ebpf": ""}[h.dp]
		if len(nets) != 1 || nets[0].Name != "bridge" || nets[0].Subnet != "172.17.0.0/16" || nets[0].Bridge != wantBridge {
			t.Fatalf("default network = %+v, want bridge 172.17.0.0/16 with bridge %q", nets, wantBridge)
		}
		a, b := h.name("a"), h.name("b")
		h.serve(a)
		h.mustCtl("run", "-d", "--name", b, "--", "sleep", "300")
		if !ping(b, h.ip(a, "bridge")) {
			t.Fatalf("%s cannot ping %s", b, a)
		}
		got := h.mustConnect(b, "tcp", h.ip(a, "bridge")+":80")
		if !strings.HasPrefix(got, a+" "+h.ip(b, "bridge")+":") {
			t.Fatalf("reply %q: want %s seeing %s's own address", got, a, b)
		}
		// The sandbox is a named namespace that ip netns exec can use.
		out := netnstest.Run(t, a, "ip", "-o", "-4", "addr", "show", "eth0")
		if !strings.Contains(out, h.ip(a, "bridge")+"/16") {
			t.Fatalf("eth0 in %s: %s", a, out)
		}
	})
}

func TestDefaultSubnetAvoidsHostRoutes(t *testing.T) {
	netnstest.RequireRoot(t)
	// A host that already routes 172.17/16 and 172.18/16 gets 172.19/16.
	hh := newHostWithRoutes(t, []string{"172.17.0.0/16", "172.18.5.0/24"})
	var ns []api.Network
	hh.ctlJSON(&ns, "network", "inspect", "bridge")
	if n := ns[0]; n.Subnet != "172.19.0.0/16" {
		t.Fatalf("default subnet %s, want 172.19.0.0/16 (172.17 and 172.18 overlap host routes)", ns[0].Subnet)
	}
	// A user network without --subnet takes the next free pool.
	hh.mustCtl("network", "create", hh.name("n"))
	hh.ctlJSON(&ns, "network", "inspect", hh.name("n"))
	if m := ns[0]; m.Subnet != "172.20.0.0/16" || m.Gateway != "172.20.0.1" {
		t.Fatalf("second network %s gw %s, want 172.20.0.0/16 gw 172.20.0.1", ns[0].Subnet, ns[0].Gateway)
	}
}

func TestUserNetworksIsolatedAndMultiHomed(t *testing.T) {
	onDatapathHosts(t, func(t *testing.T, h *host) {
		n1, n2 := h.name("n1"), h.name("n2")
		h.mustCtl("network", "create", "--subnet", "10.31.1.0/24", n1)
		h.mustCtl("network", "create", "--subnet", "10.31.2.0/24", "--gateway", "10.31.2.254", "--ip-range", "10.31.2.128/25", n2)
		a, b, c := h.name("a"), h.name("b"), h.name("c")
		h.serve(a, "--network", n1, "--ip", "10.31.1.10")
		h.serve(b, "--network", n2)
		if ip := h.ip(b, n2); !strings.HasPrefix(ip, "10.31.2.1") || ip < "10.31.2.128" {
			t.Fatalf("dynamic address %s is outside --ip-range 10.31.2.128/25", ip)
		}
		if h.ip(a, n1) != "10.31.1.10" {
			t.Fatalf("static --ip not honoured: %s", h.ip(a, n1))
		}
		// Isolation: a (n1) cannot reach b (n2).
		if ping(a, h.ip(b, n2)) {
			t.Fatalf("%s on %s reached %s on %s: networks are not isolated", a, n1, b, n2)
		}
		if _, err := h.connect(a, "tcp", h.ip(b, n2)+":80"); err == nil {
			t.Fatal("TCP crossed from n1 to n2")
		}
		// c on n1, then connected to n2 too, reaches both.
		h.mustCtl("run", "-d", "--name", c, "--network", n1, "--", "sleep", "300")
		var ep api.Endpoint
		h.ctlJSON(&ep, "network", "connect", n2, c)
		if ep.IfName != "eth1" {
			t.Fatalf("second endpoint is %s, want eth1", ep.IfName)
		}
		if got := h.mustConnect(c, "tcp", h.ip(a, n1)+":80"); !strings.HasPrefix(got, a) {
			t.Fatalf("c→a: %q", got)
		}
		if got := h.mustConnect(c, "tcp", h.ip(b, n2)+":80"); !strings.HasPrefix(got, b) {
			t.Fatalf("c→b: %q", got)
		}
		// Disconnect removes eth1 and the path to n2.
		h.mustCtl("network", "disconnect", n2, c)
		if out := netnstest.Run(t, c, "ip", "-o", "link"); strings.Contains(out, "eth1") {
			t.Fatalf("eth1 still in %s after disconnect: %s", c, out)
		}
		if ping(c, h.ip(b, n2)) {
			t.Fatal("still reaches n2 after disconnect")
		}
		// rm of a network with endpoints is refused; without, it works.
		if _, errOut, code := h.ctl("network", "rm", n2); code == 0 || !strings.Contains(errOut, "endpoint") {
			t.Fatalf("network rm with endpoints: code %d, %q", code, errOut)
		}
		h.mustCtl("sandbox", "rm", b)
		h.mustCtl("network", "rm", n2)
		if h.dp == "kernel" {
			if out := run(t, "ip", "-n", h.ns, "-o", "link", "show", "type", "bridge"); strings.Count(out, "fb-") != 1 {
				t.Fatalf("bridges after rm: %s", out)
			}
		} else if out := run(t, "ip", "-n", h.ns, "route"); strings.Contains(out, "10.31.2.") {
			t.Fatalf("routes of %s left after rm: %s", n2, out)
		}
	})
}

func TestEgressMasqueradeAndInternal(t *testing.T) {
	onDatapathHosts(t, func(t *testing.T, h *host) {
		srv := "outsrv"
		self, _ := os.Executable()
		outside := netnstest.Cmd(h.outside, "env", "FABRIC_E2E_HELPER=serve", "FABRIC_SANDBOX="+srv, self, "9000")
		if err := outside.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = outside.Process.Kill(); _ = outside.Wait() })
		h.waitListening("/var/run/netns/"+h.outside, 9000)

		a := h.name("a")
		h.mustCtl("run", "-d", "--name", a, "--", "sleep", "300")
		got := h.mustConnect(a, "tcp", outsideUplinkIP+":9000")
		if !strings.HasPrefix(got, srv+" "+hostUplinkIP+":") {
			t.Fatalf("outside saw %q, want the host's uplink address %s as source", got, hostUplinkIP)
		}
		got = h.mustConnect(a, "udp", outsideUplinkIP+":9000")
		if !strings.HasPrefix(got, srv+" "+hostUplinkIP+":") {
			t.Fatalf("UDP: outside saw %q, want source %s", got, hostUplinkIP)
		}

		in := h.name("in")
		h.mustCtl("network", "create", "--internal", "--subnet", "10.32.0.0/24", in)
		b, c := h.name("b"), h.name("c")
		h.serve(b, "--network", in)
		h.mustCtl("run", "-d", "--name", c, "--network", in, "--", "sleep", "300")
		if _, err := h.connect(b, "tcp", outsideUplinkIP+":9000"); err == nil {
			t.Fatal("sandbox on an --internal network reached the outside")
		}
		if out := netnstest.Run(t, b, "ip", "route"); strings.Contains(out, "default") {
			t.Fatalf("internal network sandbox has a default route: %s", out)
		}
		if got := h.mustConnect(c, "tcp", h.ip(b, in)+":80"); !strings.HasPrefix(got, b) {
			t.Fatalf("sandboxes on the same internal network cannot talk: %q", got)
		}
	})
}

func TestPublishedPorts(t *testing.T) {
	onDatapathHosts(t, func(t *testing.T, h *host) {
		web, peer := h.name("web"), h.name("peer")
		h.serve(web, "-p", "8080:80", "-p", "8081:80/udp")
		h.mustCtl("run", "-d", "--name", peer, "--", "sleep", "300")
		for _, tc := range []struct{ what, ns, proto, addr string }{
			{"from another host", h.outside, "tcp", hostUplinkIP + ":8080"},
			{"udp from another host", h.outside, "udp", hostUplinkIP + ":8081"},
			{"from the host via its address", h.ns, "tcp", hostUplinkIP + ":8080"},
			{"from the host via 127.0.0.1", h.ns, "tcp", "127.0.0.1:8080"},
			{"from the host via the gateway address", h.ns, "tcp", "172.17.0.1:8080"},
			{"hairpin from a sibling sandbox", peer, "tcp", hostUplinkIP + ":8080"},
			{"hairpin from the sandbox itself", web, "tcp", hostUplinkIP + ":8080"},
		} {
			got, err := h.connect(tc.ns, tc.proto, tc.addr)
			if err != nil || !strings.HasPrefix(got, web+" ") {
				t.Errorf("published port %s (%s %s): %q %v", tc.what, tc.proto, tc.addr, got, err)
			}
		}
		// A second sandbox may not take the same host port.
		other := h.name("other")
		_, errOut, code := h.ctl("run", "-d", "--name", other, "-p", "8080:80", "--", "sleep", "300")
		if code == 0 || !strings.Contains(errOut, "already published") {
			t.Fatalf("conflicting host port: code %d %q", code, errOut)
		}
		// A different protocol on the same port is fine.
		h.mustCtl("run", "-d", "--name", other, "-p", "8080:80/udp", "--", "sleep", "300")
		// After rm the port is free again and the rule is gone.
		h.mustCtl("sandbox", "rm", web)
		if _, err := h.connect(h.outside, "tcp", hostUplinkIP+":8080"); err == nil {
			t.Fatal("published port still answers after the sandbox was removed")
		}
	})
}

func TestNoneHostAndContainerModes(t *testing.T) {
	onDatapathHosts(t, func(t *testing.T, h *host) {
		none, host, joined, owner := h.name("none"), h.name("host"), h.name("join"), h.name("own")
		h.mustCtl("run", "-d", "--name", none, "--network", "none", "--", "sleep", "300")
		out := netnstest.Run(t, none, "ip", "-o", "link")
		if strings.Count(out, "\n") != 1 || !strings.Contains(out, "lo:") || !strings.Contains(out, "UP") {
			t.Fatalf("--network none should have only lo, up: %s", out)
		}
		h.mustCtl("run", "-d", "--name", host, "--network", "host", "--", "sleep", "300")
		if nsOf(t, h.sandbox(host).PID) != nsOfPath(t, h.nsPath) {
			t.Fatal("host mode command is not in the host's namespace")
		}
		h.mustCtl("run", "-d", "--name", owner, "--", "sleep", "300")
		h.mustCtl("run", "-d", "--name", joined, "--network", "container:"+owner, "--", "sleep", "300")
		if nsOf(t, h.sandbox(joined).PID) != nsOfPath(t, netns.Path(owner)) {
			t.Fatal("container: mode command is not in the other sandbox's namespace")
		}
		if _, errOut, code := h.ctl("sandbox", "rm", owner); code == 0 || !strings.Contains(errOut, joined) {
			t.Fatalf("rm of a sandbox others share: code %d %q", code, errOut)
		}
		// Foreground run returns the command's exit code and --rm cleans up.
		fg := h.name("fg")
		_, _, code := h.ctl("run", "--rm", "--name", fg, "--", "sh", "-c", "ip -o link show eth0 >/dev/null && exit 7")
		if code != 7 {
			t.Fatalf("foreground run exit code %d, want 7", code)
		}
		if _, _, code := h.ctl("sandbox", "inspect", fg); code == 0 {
			t.Fatal("--rm sandbox still exists")
		}
		if netns.IsNamespace(netns.Path(fg)) {
			t.Fatal("--rm sandbox namespace still exists")
		}
		// sandbox rm stops the command and removes the namespace.
		pid := h.sandbox(none).PID
		h.mustCtl("sandbox", "rm", none)
		if netnstest.ProcessRunning(pid) {
			t.Fatalf("command %d still runs after sandbox rm", pid)
		}
		if netns.IsNamespace(netns.Path(none)) {
			t.Fatal("namespace left after sandbox rm")
		}
	})
}

func TestConnectExistingNamespaceByPath(t *testing.T) {
	onDatapathHosts(t, func(t *testing.T, h *host) {
		// A namespace made by someone else, held by a process as a container
		// runtime would.
		foreign, _ := netnstest.New(t, h.prefix+"x")
		sleeper := netnstest.Cmd(foreign, "sleep", "300")
		if err := sleeper.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sleeper.Process.Kill(); _ = sleeper.Wait() })
		path := "/proc/" + itoa(sleeper.Process.Pid) + "/ns/net"
		n := h.name("n")
		h.mustCtl("network", "create", "--subnet", "10.33.0.0/24", n)
		var ep api.Endpoint
		h.ctlJSON(&ep, "network", "connect", "--ip", "10.33.0.50", n, path)
		if ep.IP != "10.33.0.50/24" || ep.IfName != "eth0" {
			t.Fatalf("endpoint %+v", ep)
		}
		srv := h.name("srv")
		h.serve(srv, "--network", n)
		if got := h.mustConnect(foreign, "tcp", h.ip(srv, n)+":80"); !strings.HasPrefix(got, srv+" 10.33.0.50:") {
			t.Fatalf("foreign namespace → sandbox: %q", got)
		}
		h.mustCtl("network", "disconnect", n, path)
		if out := netnstest.Run(t, foreign, "ip", "-o", "link"); strings.Contains(out, "eth0") {
			t.Fatalf("eth0 left in the foreign namespace: %s", out)
		}
	})
}

func nsOf(t *testing.T, pid int) string {
	t.Helper()
	l, err := os.Readlink("/proc/" + itoa(pid) + "/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func nsOfPath(t *testing.T, path string) string {
	t.Helper()
	id, err := netns.IDOf(path)
	if err != nil {
		t.Fatal(err)
	}
	return "net:[" + itoa(int(id.Ino)) + "]"
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestNetworkOptionsAndAddressRelease(t *testing.T) {
	onDatapathHosts(t, func(t *testing.T, h *host) {
		n, br := h.name("n"), "br"+h.prefix[1:7]
		opts := []string{"-o", "mtu=1400"}
		if h.dp == "kernel" {
			opts = append(opts, "-o", "bridge_name="+br) // the eBPF datapath has no bridge to name
		}
		h.mustCtl(append(append([]string{"network", "create", "--subnet", "10.35.0.0/24"}, opts...), n)...)
		if h.dp == "kernel" {
			out := run(t, "ip", "-n", h.ns, "-o", "link", "show", br)
			if !strings.Contains(out, "mtu 1400") {
				t.Fatalf("bridge %s: %s", br, out)
			}
		}
		a, b := h.name("a"), h.name("b")
		h.mustCtl("run", "-d", "--name", a, "--network", n, "--ip", "10.35.0.20", "--", "sleep", "300")
		if out := netnstest.Run(t, a, "ip", "-o", "link", "show", "eth0"); !strings.Contains(out, "mtu 1400") {
			t.Fatalf("endpoint MTU does not follow the network: %s", out)
		}
		// The address is in use until the sandbox goes, then free again.
		if _, errOut, code := h.ctl("run", "-d", "--name", b, "--network", n, "--ip", "10.35.0.20", "--", "sleep", "300"); code != 1 || !strings.Contains(errOut, "in use") {
			t.Fatalf("duplicate static address: code %d %q", code, errOut)
		}
		h.mustCtl("sandbox", "rm", a)
		h.mustCtl("run", "-d", "--name", b, "--network", n, "--ip", "10.35.0.20", "--", "sleep", "300")
		var nets []api.Network
		h.ctlJSON(&nets, "network", "inspect", n)
		if nets[0].IPsUsed != 1 || nets[0].Endpoints != 1 {
			t.Fatalf("network %s after reuse: used %d endpoints %d, want 1 and 1", n, nets[0].IPsUsed, nets[0].Endpoints)
		}
		h.mustCtl("sandbox", "rm", b)
		h.mustCtl("network", "rm", n)
		if _, err := exec.Command("ip", "-n", h.ns, "link", "show", br).Output(); err == nil {
			t.Fatalf("bridge %s left after network rm", br)
		}
	})
}

// TestDatapathFallback: when the eBPF programs cannot be loaded (here: the
// bpf root is not on a bpffs), auto runs the kernel datapath and says why
// in status; ebpf refuses to start with a clear error.
func TestDatapathFallback(t *testing.T) {
	netnstest.RequireRoot(t)
	notBPFFS := t.TempDir()
	h := newHost(t, "--datapath", "auto", "--bpf-root", notBPFFS)
	// Degraded, not down: status exits 1 and says why.
	var st api.Status
	out, errOut, code := h.ctl("-o", "json", "status")
	if code != 1 {
		t.Fatalf("status of a fallen-back agent: exit %d, want 1 (degraded)\n%s%s", code, out, errOut)
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status json: %v\n%s", err, out)
	}
	if st.Datapath != "kernel" {
		t.Fatalf("auto with an unusable bpf root runs %q, want the kernel fallback", st.Datapath)
	}
	found := false
	for _, w := range st.Warnings {
		found = found || (strings.Contains(w, "eBPF datapath unavailable") && strings.Contains(w, "bpf filesystem"))
	}
	if !found {
		t.Fatalf("status warnings %q do not explain the fallback", st.Warnings)
	}
	a, b := h.name("a"), h.name("b")
	h.serve(a)
	h.mustCtl("run", "-d", "--name", b, "--", "sleep", "300")
	if got := h.mustConnect(b, "tcp", h.ip(a, "bridge")+":80"); !strings.HasPrefix(got, a) {
		t.Fatalf("fallback datapath does not forward: %q", got)
	}

	_, nsPath := netnstest.New(t, "fe")
	dir := t.TempDir()
	cmd := exec.Command("nsenter", "--net="+nsPath, binDir+"/fabricd", "--datapath", "ebpf", "--bpf-root", notBPFFS,
		"--state-dir", dir+"/state", "--socket", dir+"/s.sock", "--config", h.configFile(), "--node-name", "fe")
	eout, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(eout), "ebpf datapath") || !strings.Contains(string(eout), "not on a bpf filesystem") {
		t.Fatalf("--datapath ebpf with an unusable bpf root: err %v, output:\n%s", err, eout)
	}

	// A setting that cannot work is an error even with auto, not a silent
	// fallback, and it is refused before anything is made. The host's
	// uplink is a veth, where native XDP is refused.
	root := "/sys/fs/bpf/fabric-e2e-x" + h.prefix
	t.Cleanup(func() { os.RemoveAll(root) })
	cmd = exec.Command("nsenter", "--net="+h.nsPath, binDir+"/fabricd", "--datapath", "auto", "--xdp", "native",
		"--bpf-root", root, "--state-dir", dir+"/state2", "--socket", dir+"/s2.sock",
		"--config", h.configFile(), "--node-name", "fe", "--metrics-listen", "")
	eout, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(eout), "--xdp native on uplink up0") {
		t.Fatalf("--datapath auto --xdp native on a veth uplink: err %v, output:\n%s", err, eout)
	}
	if _, err := os.Stat(root); err == nil {
		t.Fatalf("refused start left its bpf root %s behind", root)
	}
	if out := run(t, "ip", "-n", h.ns, "-o", "link", "show"); strings.Contains(out, "fabric-gw") {
		t.Fatalf("refused start made fabric-gw: %s", out)
	}
}
