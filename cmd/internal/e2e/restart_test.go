package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// snapshot is everything fabric's state and kernel footprint consist of.
type snapshot struct {
	networks, sandboxes, endpoints string
	links                          []string
	nft                            string
	routes                         string
	pins                           []string // the eBPF datapath's pinned links
	namespaces                     []string
}

func (h *host) snapshot() snapshot {
	h.t.Helper()
	var s snapshot
	s.networks = h.canonCtl("network", "ls")
	s.sandboxes = h.canonCtl("sandbox", "ls")
	s.endpoints = h.canonCtl("endpoint", "ls")
	s.links = h.links()
	s.nft = run(h.t, "ip", "netns", "exec", h.ns, "nft", "list", "ruleset")
	// linkdown follows a bridge's carrier, which comes and goes with its ports.
	s.routes = strings.ReplaceAll(run(h.t, "ip", "-n", h.ns, "route", "show", "table", "main"), " linkdown", "")
	s.pins = h.pins()
	entries, _ := os.ReadDir(netns.RunDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), h.prefix) {
			s.namespaces = append(s.namespaces, e.Name())
		}
	}
	return s
}

// canonCtl runs a -o json listing and returns it in canonical form.
func (h *host) canonCtl(args ...string) string {
	h.t.Helper()
	var v any
	h.ctlJSON(&v, args...)
	return canonJSON(h.t, v)
}

// pins lists the links the eBPF datapath pinned (none on the kernel one).
func (h *host) pins() []string {
	entries, _ := os.ReadDir(h.bpfRoot + "/links")
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// endpointPins lists the per-endpoint tc pins of older agents
// ("ep-IFINDEX"): the endpoints' program is now one filter on a shared tc
// block, pinned once.
func (h *host) endpointPins() []string {
	var out []string
	for _, p := range h.pins() {
		if strings.HasPrefix(p, "ep-") {
			out = append(out, p)
		}
	}
	return out
}

// endpointHooks lists the devices whose clsact qdisc is bound to a shared
// tc block: the eBPF datapath's endpoint veths.
func (h *host) endpointHooks() []string {
	var out []string
	for _, line := range strings.Split(run(h.t, "tc", "-n", h.ns, "qdisc", "show"), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[1] == "clsact" && strings.Contains(line, " ingress_block ") {
			out = append(out, f[4])
		}
	}
	return out
}

// links lists the host namespace's links as "name alias" lines.
func (h *host) links() []string {
	out := run(h.t, "ip", "-n", h.ns, "-o", "link", "show")
	var links []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || !isLinkIndex(f[0]) {
			// Not a link: ip also prints notes such as "Peer netns
			// reference is invalid." for a veth whose peer's namespace
			// is going away while it lists.
			continue
		}
		name := strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]
		alias := ""
		if i := strings.Index(line, "alias "); i >= 0 {
			alias = strings.Fields(line[i+6:])[0]
		}
		links = append(links, name+" "+alias)
	}
	sort.Strings(links)
	return links
}

// isLinkIndex says whether f is the "N:" that starts a line of ip -o link.
func isLinkIndex(f string) bool {
	n, ok := strings.CutSuffix(f, ":")
	if !ok || n == "" {
		return false
	}
	for _, c := range n {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func diffSnapshots(t *testing.T, what string, a, b snapshot) {
	t.Helper()
	if a.networks != b.networks {
		t.Errorf("%s: networks differ:\n%s\n---\n%s", what, a.networks, b.networks)
	}
	if a.sandboxes != b.sandboxes {
		t.Errorf("%s: sandboxes differ:\n%s\n---\n%s", what, a.sandboxes, b.sandboxes)
	}
	if a.endpoints != b.endpoints {
		t.Errorf("%s: endpoints differ:\n%s\n---\n%s", what, a.endpoints, b.endpoints)
	}
	if strings.Join(a.links, "\n") != strings.Join(b.links, "\n") {
		t.Errorf("%s: links differ:\n%s\n---\n%s", what, strings.Join(a.links, "\n"), strings.Join(b.links, "\n"))
	}
	if a.nft != b.nft {
		t.Errorf("%s: nftables differ:\n%s\n---\n%s", what, a.nft, b.nft)
	}
	if a.routes != b.routes {
		t.Errorf("%s: routes differ:\n%s\n---\n%s", what, a.routes, b.routes)
	}
	if strings.Join(a.pins, " ") != strings.Join(b.pins, " ") {
		t.Errorf("%s: pinned links differ: %v vs %v", what, a.pins, b.pins)
	}
	if strings.Join(a.namespaces, " ") != strings.Join(b.namespaces, " ") {
		t.Errorf("%s: namespaces differ: %v vs %v", what, a.namespaces, b.namespaces)
	}
}

func TestKill9AndRestartKeepsEverything(t *testing.T) {
	onDatapathHosts(t, func(t *testing.T, h *host) {
		n := h.name("n")
		h.mustCtl("network", "create", "--subnet", "10.34.0.0/24", n)
		web, multi, none, tmp := h.name("web"), h.name("multi"), h.name("none"), h.name("tmp")
		h.serve(web, "--network", n, "-p", "8080:80")
		h.mustCtl("run", "-d", "--name", multi, "--", "sleep", "300")
		h.mustCtl("network", "connect", n, multi)
		h.mustCtl("run", "-d", "--name", none, "--network", "none", "--", "sleep", "300")
		before := h.snapshot()
		webPID := h.sandbox(web).PID
		// tmp's command exits while no agent watches; with --rm the restarted
		// agent must remove it, leaving exactly the state of "before".
		h.mustCtl("run", "-d", "--rm", "--name", tmp, "--", "sleep", "1")
		tmpSB := h.sandbox(tmp)
		tmpNS, tmpPID := tmpSB.NetNS, tmpSB.PID
		if tmpPID <= 0 {
			t.Fatalf("sandbox %s has no command PID: %+v", tmp, tmpSB)
		}

		h.kill9()
		// With the agent dead, traffic keeps flowing: it is all in the kernel.
		if got := h.mustConnect(h.outside, "tcp", hostUplinkIP+":8080"); !strings.HasPrefix(got, web) {
			t.Fatalf("published port while the agent is down: %q", got)
		}
		netnstest.Eventually(t, 10*time.Second, "tmp's command to exit while the agent is down", func() bool { return !netnstest.ProcessRunning(tmpPID) })
		h.start()

		after := h.snapshot()
		var sbs []api.Sandbox
		h.ctlJSON(&sbs, "sandbox", "ls")
		for _, sb := range sbs {
			if sb.Name == tmp {
				t.Fatalf("--rm sandbox whose command exited during the outage is still listed: %+v", sb)
			}
		}
		if netns.IsNamespace(tmpNS) {
			t.Fatal("namespace of the auto-removed sandbox is left behind")
		}
		diffSnapshots(t, "after kill -9 and restart", before, after)

		if h.sandbox(web).PID != webPID {
			t.Fatal("web's command was restarted or lost")
		}
		if got := h.mustConnect(multi, "tcp", h.ip(web, n)+":80"); !strings.HasPrefix(got, web) {
			t.Fatalf("multi → web after restart: %q", got)
		}
		if got := h.mustConnect(h.outside, "tcp", hostUplinkIP+":8080"); !strings.HasPrefix(got, web) {
			t.Fatalf("published port after restart: %q", got)
		}
		// The restarted agent still owns the re-adopted command.
		h.mustCtl("sandbox", "rm", web)
		if netnstest.ProcessRunning(webPID) {
			t.Fatal("re-adopted command survived sandbox rm")
		}
	})
}

// canonJSON re-encodes a value so that two documents compare by content.
func canonJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestKill9AtRandomPointsConverges(t *testing.T) {
	onDatapathHosts(t, func(t *testing.T, h *host) {
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
		// The commands' argument tells this test's from any other's.
		secs := fmt.Sprint(300_000 + rng.IntN(600_000))
		for round := 0; round < 8; round++ {
			var wg sync.WaitGroup
			for i := 0; i < 3; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					name := h.name(fmt.Sprintf("r%d%d", round, i))
					h.ctl("run", "-d", "--name", name, "-p", fmt.Sprintf("%d:80", 20000+round*10+i), "--", "sleep", secs)
				}(i)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				h.ctl("network", "create", h.name(fmt.Sprintf("net%d", round)))
			}()
			// fabricctl takes ~20 ms to start: kill before, during and after.
			delay := time.Duration(rng.IntN(150)) * time.Millisecond
			time.Sleep(delay)
			h.kill9()
			wg.Wait()
			h.start()
			sbs, nets := h.checkConsistent()
			t.Logf("round %d: killed after %v; %d sandboxes and %d networks survived", round, delay, sbs, nets)
		}
		// Everything can still be removed cleanly.
		var sbs []api.Sandbox
		h.ctlJSON(&sbs, "sandbox", "ls")
		for _, sb := range sbs {
			h.mustCtl("sandbox", "rm", sb.Name)
		}
		// A removed sandbox's pair goes with its namespace, in the kernel's
		// background clean-up: moments later.
		var left []string
		if !netnstest.Poll(10*time.Second, func() bool {
			left = left[:0]
			for _, l := range h.links() {
				if strings.HasPrefix(l, "fv") {
					left = append(left, l)
				}
			}
			return len(left) == 0 && (h.dp == "kernel" || len(h.endpointHooks()) == 0)
		}) {
			t.Errorf("endpoint links %v (or tc hooks %v) left 10 s after removing every sandbox", left, h.endpointHooks())
		}
		// Commands the agent started before it was killed, recorded or
		// not, are gone with their sandboxes.
		if !netnstest.Poll(10*time.Second, func() bool { return len(processesOf("sleep", secs)) == 0 }) {
			t.Errorf("commands %v left 10 s after removing every sandbox", processesOf("sleep", secs))
		}
		if h.dp == "kernel" {
			if out := run(t, "ip", "netns", "exec", h.ns, "nft", "list", "table", "ip", "fabric"); strings.Contains(out, "dnat to") {
				t.Errorf("DNAT rules left after removing every sandbox:\n%s", out)
			}
		} else if pins, hooks := h.endpointPins(), h.endpointHooks(); len(pins) != 0 || len(hooks) != 0 {
			t.Errorf("endpoint pins %v or tc hooks %v left after removing every sandbox", pins, hooks)
		}
	})
}

// checkConsistent asserts that records and kernel match exactly: every
// endpoint has its links, no fabric link or namespace lacks a record.
func (h *host) checkConsistent() (sandboxes, networks int) {
	h.t.Helper()
	var eps []api.Endpoint
	var sbs []api.Sandbox
	var nets []api.Network
	h.ctlJSON(&eps, "endpoint", "ls")
	h.ctlJSON(&sbs, "sandbox", "ls")
	h.ctlJSON(&nets, "network", "ls")
	want := map[string]bool{}
	for _, ep := range eps {
		want[ep.HostIfName] = true
		out := run(h.t, "ip", "netns", "exec", ep.Sandbox, "ip", "-o", "-4", "addr", "show", ep.IfName)
		if !strings.Contains(out, ep.IP) {
			h.t.Errorf("endpoint %s: %s in %s lacks %s: %s", ep.ID[:12], ep.IfName, ep.Sandbox, ep.IP, out)
		}
	}
	if h.dp == "kernel" {
		for _, n := range nets {
			want[n.Bridge] = true
		}
	} else if hooks := h.endpointHooks(); len(hooks) != len(eps) || len(h.endpointPins()) != 0 {
		// One veth on the endpoints' tc block per endpoint (all on bridge
		// networks here), no per-endpoint pin.
		h.t.Errorf("%d veths on the endpoints' tc block for %d endpoints: %v (per-endpoint pins %v)", len(hooks), len(eps), hooks, h.endpointPins())
	}
	for _, l := range h.links() {
		f := strings.Fields(l)
		if len(f) == 2 && strings.HasPrefix(f[1], "fabric:") && !want[f[0]] {
			h.t.Errorf("leaked link %s (no record)", l)
		}
		delete(want, f[0])
	}
	for l := range want {
		h.t.Errorf("link %s of a record is missing", l)
	}
	names := map[string]bool{}
	for _, sb := range sbs {
		names[sb.Name] = true
		if sb.State != api.StateRunning {
			h.t.Errorf("sandbox %s is %s after restart, want running", sb.Name, sb.State)
		}
	}
	entries, _ := os.ReadDir(netns.RunDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), h.prefix) && !names[e.Name()] {
			h.t.Errorf("leaked namespace %s (no sandbox record)", e.Name())
			netnstest.Remove(e.Name())
		}
	}
	return len(sbs), len(nets)
}

// TestKill9KeepsRunningFlows kills the agent while traffic flows and
// restarts it: a ping between sandboxes and one to the outside lose no
// packet, and TCP connections through masquerade and through a published
// port stay up, on both datapaths.
func TestKill9KeepsRunningFlows(t *testing.T) {
	onDatapathHosts(t, func(t *testing.T, h *host) {
		self, _ := os.Executable()
		outside := netnstest.Cmd(h.outside, "env", "FABRIC_E2E_HELPER=serve", "FABRIC_SANDBOX=outsrv", self, "9000")
		if err := outside.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = outside.Process.Kill(); _ = outside.Wait() })
		h.waitListening("/var/run/netns/"+h.outside, 9000)
		a, web := h.name("a"), h.name("web")
		h.mustCtl("run", "-d", "--name", a, "--", "sleep", "300")
		h.serve(web, "-p", "8080:80")

		type job struct {
			what string
			cmd  *exec.Cmd
			out  bytes.Buffer
		}
		jobs := []*job{
			{what: "ping a → web", cmd: netnstest.Cmd(a, "ping", "-q", "-i", "0.02", "-c", "200", h.ip(web, "bridge"))},
			{what: "ping a → outside", cmd: netnstest.Cmd(a, "ping", "-q", "-i", "0.02", "-c", "200", outsideUplinkIP)},
			{what: "TCP a → outside (masquerade)", cmd: netnstest.Cmd(a, "env", "FABRIC_E2E_HELPER=stream", self, outsideUplinkIP+":9000", "4s")},
			{what: "TCP outside → published port", cmd: netnstest.Cmd(h.outside, "env", "FABRIC_E2E_HELPER=stream", self, hostUplinkIP+":8080", "4s")},
		}
		for _, j := range jobs {
			j.cmd.Stdout, j.cmd.Stderr = &j.out, &j.out
			if err := j.cmd.Start(); err != nil {
				t.Fatal(err)
			}
		}
		netnstest.Until(t, 10*time.Second, "both TCP streams under way", func() error {
			for _, c := range []struct{ ns, port string }{{a, "9000"}, {h.outside, "8080"}} {
				out, err := netnstest.Cmd(c.ns, "ss", "-Htn", "state", "established", "( dport = :"+c.port+" )").CombinedOutput()
				if err != nil || strings.TrimSpace(string(out)) == "" {
					return fmt.Errorf("no connection to port %s from %s yet: %v %s", c.port, c.ns, err, out)
				}
			}
			return nil
		})
		h.kill9()
		// A deliberate outage: the flows must survive the agent being away
		// for a while, not only for the instant of a restart.
		time.Sleep(500 * time.Millisecond)
		h.start()
		for _, j := range jobs {
			err := j.cmd.Wait()
			out := j.out.String()
			if err != nil || (strings.HasPrefix(j.what, "ping") && !strings.Contains(out, " 0% packet loss")) {
				t.Errorf("%s across kill -9 and restart: %v\n%s", j.what, err, out)
			}
		}
	})
}

// processesOf lists the processes (not zombies) whose command line is argv.
func processesOf(argv ...string) []int {
	want := strings.Join(argv, "\x00") + "\x00"
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		// A zombie's command line reads empty.
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil && string(b) == want {
			pids = append(pids, pid)
		}
	}
	return pids
}
