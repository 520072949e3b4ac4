// Package e2e tests fabricd and fabricctl together, as binaries, in network
// namespaces the tests create: each test gets its own "host" namespace with
// its own agent, plus an "outside" namespace joined to the host by a veth
// uplink, standing for the rest of the network.
package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/testbin"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

var binDir string

// Addresses live only inside the namespaces the tests make (TEST-NET-1).
const (
	hostUplinkIP    = "192.0.2.1"
	outsideUplinkIP = "192.0.2.2"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv("FABRIC_E2E_HELPER"); mode != "" {
		os.Exit(helperMain(mode, os.Args[1:]))
	}
	os.Exit(testbin.Main(m, "fabric-e2e-bin", "e2e: not root: every test here skips (they need network namespaces, links and nftables)", &binDir))
}

// host is one test host: a namespace with an uplink, an outside peer, and
// a fabricd serving in it.
type host struct {
	t       *testing.T
	ns      string // host namespace name
	nsPath  string
	outside string // outside namespace name
	dir     string
	socket  string
	prefix  string // sandbox name prefix, unique per test
	agent   *exec.Cmd
	exited  <-chan struct{} // closed when agent has exited and been waited for
	logFile *os.File
	extra   []string // extra fabricd flags
	dp      string   // datapath: kernel unless extra says otherwise
	bpfRoot string   // this agent's pins, removed with the host
	wrap    []string // command that runs fabricd (after nsenter), e.g. setpriv …
}

// datapaths are the datapaths the suite runs on: every test that goes
// through onDatapaths runs once on each.
var datapaths = []string{"kernel", "ebpf"}

// onDatapaths runs fn as one subtest per datapath.
func onDatapaths(t *testing.T, fn func(t *testing.T, dp string)) {
	for _, dp := range datapaths {
		t.Run(dp, func(t *testing.T) { fn(t, dp) })
	}
}

// onDatapathHosts runs fn as one subtest per datapath, each with a new
// host whose agent runs that datapath (h.dp).
func onDatapathHosts(t *testing.T, fn func(t *testing.T, h *host)) {
	onDatapaths(t, func(t *testing.T, dp string) { fn(t, newHost(t, "--datapath", dp)) })
}

// withDatapath makes --datapath explicit in extra (kernel by default) and
// returns it.
func withDatapath(extra []string) ([]string, string) {
	for i, a := range extra {
		if a == "--datapath" && i+1 < len(extra) {
			return extra, extra[i+1]
		}
	}
	return append([]string{"--datapath", "kernel"}, extra...), "kernel"
}

func newHost(t *testing.T, extra ...string) *host {
	t.Helper()
	return newHostWithRoutes(t, []string{"default"}, extra...)
}

// newHostWithRoutes makes a host whose namespace has routes via the
// outside peer before the agent starts (newHost: just the default route).
func newHostWithRoutes(t *testing.T, routes []string, extra ...string) *host {
	t.Helper()
	return makeHost(t, routes, nil, extra)
}

// makeHost makes a host; wrap, if set, is the command fabricd runs under.
func makeHost(t *testing.T, routes, wrap, extra []string) *host {
	t.Helper()
	netnstest.RequireRoot(t)
	h := newHostNamespaces(t, "t", "fh", "fo", routes, extra)
	h.wrap = wrap
	t.Cleanup(h.cleanup)
	h.start()
	return h
}

// newHostNamespaces makes what a host is before its agent starts: a host
// namespace (named from hostNS) with the uplink up0, a veth to out0 in an
// outside namespace (from outsideNS), routes via the outside peer, and a
// directory for the agent, which is to run with the flags extra. Sandbox
// names get prefix.
func newHostNamespaces(t *testing.T, prefix, hostNS, outsideNS string, routes, extra []string) *host {
	t.Helper()
	h := &host{t: t, prefix: netnstest.UniqueName(prefix)}
	h.extra, h.dp = withDatapath(extra)
	h.ns, h.nsPath = netnstest.New(t, hostNS)
	h.outside, _ = netnstest.New(t, outsideNS)
	h.dir = t.TempDir()
	h.socket = filepath.Join(h.dir, "fabricd.sock")
	run(t, "ip", "link", "add", "up0", "netns", h.ns, "type", "veth", "peer", "name", "out0", "netns", h.outside)
	run(t, "ip", "-n", h.ns, "addr", "add", hostUplinkIP+"/24", "dev", "up0")
	run(t, "ip", "-n", h.ns, "link", "set", "up0", "up")
	for _, r := range routes {
		run(t, "ip", "-n", h.ns, "route", "add", r, "via", outsideUplinkIP)
	}
	run(t, "ip", "-n", h.outside, "addr", "add", outsideUplinkIP+"/24", "dev", "out0")
	run(t, "ip", "-n", h.outside, "link", "set", "out0", "up")
	return h
}

// name returns a sandbox or network name unique to this test.
func (h *host) name(s string) string { return h.prefix + s }

// start runs fabricd in the host namespace (only the network namespace is
// switched, as the lab does) and waits until it answers.
func (h *host) start() {
	h.t.Helper()
	h.startWith(append([]string{"--net=" + h.nsPath}, h.wrap...), nil)
}

// startWith runs fabricd under nsenter with nsenterArgs, and env added to
// this process's environment, and waits until it answers.
func (h *host) startWith(nsenterArgs, env []string) {
	h.t.Helper()
	var err error
	h.logFile, err = os.OpenFile(filepath.Join(h.dir, "fabricd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		h.t.Fatal(err)
	}
	if h.bpfRoot == "" {
		h.bpfRoot = "/sys/fs/bpf/fabric-e2e-" + h.prefix
	}
	args := append(append(nsenterArgs, filepath.Join(binDir, "fabricd"),
		"--state-dir", filepath.Join(h.dir, "state"), "--socket", h.socket, "--bpf-root", h.bpfRoot,
		"--node-name", h.ns, "--log-level", "debug", "--config", h.configFile()), h.extra...)
	h.agent = exec.Command("nsenter", args...)
	h.agent.Stdout, h.agent.Stderr = h.logFile, h.logFile
	h.agent.Env = append(append(os.Environ(), "FABRIC_SOCKET="), env...)
	if err := h.agent.Start(); err != nil {
		h.t.Fatalf("start fabricd: %v", err)
	}
	exited := make(chan struct{})
	h.exited = exited
	go func(c *exec.Cmd) { _ = c.Wait(); close(exited) }(h.agent)
	// status exits 1 when the agent reports warnings, 2 when unreachable.
	// 60s: in the kernel matrix's emulated guests (no KVM) a first start
	// loading the eBPF objects took over 20s when the host was busy.
	up := netnstest.PollEvery(agentStartTimeout, 50*time.Millisecond, func() bool {
		select {
		case <-exited:
			h.t.Fatalf("fabricd exited during start-up:\n%s", h.log())
		default:
		}
		_, _, code := h.ctl("status")
		return code == 0 || code == 1
	})
	if !up {
		h.t.Fatalf("fabricd did not answer within %v:\n%s", agentStartTimeout, h.log())
	}
}

const agentStartTimeout = 60 * time.Second

// kill9 kills the agent the hard way; sandboxes and their commands live on.
func (h *host) kill9() {
	if !h.signalAgent(syscall.SIGKILL, 10*time.Second) {
		h.t.Fatalf("fabricd still runs 10s after SIGKILL")
	}
	h.forgetAgent()
}

// stop ends the agent gracefully, or kills it after 5 s.
func (h *host) stop() {
	if !h.signalAgent(syscall.SIGTERM, 5*time.Second) {
		_ = h.agent.Process.Kill()
	}
	h.forgetAgent()
}

// signalAgent sends sig to the agent, if one runs, and reports whether it
// has exited (or none ran) within d.
func (h *host) signalAgent(sig syscall.Signal, d time.Duration) bool {
	if h.agent == nil || h.agent.Process == nil {
		return true
	}
	_ = h.agent.Process.Signal(sig)
	select {
	case <-h.exited:
		return true
	case <-time.After(d):
		return false
	}
}

// forgetAgent leaves the host without an agent and closes its log.
func (h *host) forgetAgent() {
	h.agent = nil
	if h.logFile != nil {
		h.logFile.Close()
	}
}

// configFile is an empty config, so a host's /etc/fabric/fabric.yaml
// cannot change what the test runs.
func (h *host) configFile() string {
	p := filepath.Join(h.dir, "fabric.yaml")
	if err := os.WriteFile(p, []byte("# empty: defaults and flags only\n"), 0o600); err != nil {
		h.t.Fatal(err)
	}
	return p
}

func (h *host) log() string {
	b, _ := os.ReadFile(filepath.Join(h.dir, "fabricd.log"))
	if len(b) > 6000 {
		b = b[len(b)-6000:]
	}
	return string(b)
}

func (h *host) cleanup() {
	if h.t.Failed() {
		h.t.Logf("fabricd log (tail):\n%s", h.log())
	}
	if h.agent != nil {
		// Remove what the test left, so commands do not outlive it.
		var sbs []api.Sandbox
		if out, _, code := h.ctl("-o", "json", "sandbox", "ls"); code == 0 && json.Unmarshal([]byte(out), &sbs) == nil {
			for i := len(sbs) - 1; i >= 0; i-- {
				h.ctl("sandbox", "rm", sbs[i].Name)
			}
		}
		h.stop()
	}
	if h.bpfRoot != "" {
		// Unpinning detaches what the agent attached (the devices are
		// going with the namespace anyway) and frees the maps.
		_ = os.RemoveAll(h.bpfRoot)
	}
	// Whatever is left (a crashed agent's sandboxes) goes with its namespace.
	entries, _ := os.ReadDir("/var/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), h.prefix) {
			netnstest.Remove(e.Name())
		}
	}
	etc, _ := os.ReadDir("/etc/netns")
	for _, e := range etc {
		if strings.HasPrefix(e.Name(), h.prefix) {
			os.RemoveAll(filepath.Join("/etc/netns", e.Name()))
		}
	}
}

// ctl runs fabricctl against this host's agent.
func (h *host) ctl(args ...string) (stdout, stderr string, code int) {
	return testbin.Run(60*time.Second, nil, filepath.Join(binDir, "fabricctl"), append([]string{"--socket", h.socket}, args...)...)
}

// mustCtl runs fabricctl and fails the test unless it succeeds.
func (h *host) mustCtl(args ...string) string {
	h.t.Helper()
	out, errOut, code := h.ctl(args...)
	if code != 0 {
		h.t.Fatalf("fabricctl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// ctlJSON runs fabricctl -o json and decodes the output.
func (h *host) ctlJSON(v any, args ...string) {
	h.t.Helper()
	out := h.mustCtl(append([]string{"-o", "json"}, args...)...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		h.t.Fatalf("decode %q: %v", out, err)
	}
}

func (h *host) sandbox(name string) api.Sandbox {
	h.t.Helper()
	var sbs []api.Sandbox
	h.ctlJSON(&sbs, "sandbox", "inspect", name)
	if len(sbs) != 1 {
		h.t.Fatalf("inspect %s returned %d sandboxes", name, len(sbs))
	}
	return sbs[0]
}

// ip returns a sandbox's address (without prefix) on a network.
func (h *host) ip(sandbox, network string) string {
	h.t.Helper()
	for _, ep := range h.sandbox(sandbox).Endpoints {
		if ep.Network == network {
			return strings.Split(ep.IP, "/")[0]
		}
	}
	h.t.Fatalf("sandbox %s has no endpoint on %s", sandbox, network)
	return ""
}

// serve starts a TCP+UDP responder as sandbox name's command.
func (h *host) serve(name string, runArgs ...string) {
	h.t.Helper()
	self, _ := os.Executable()
	args := append([]string{"run", "-d", "--name", name}, runArgs...)
	args = append(args, "--", "env", "FABRIC_E2E_HELPER=serve", self, "80")
	h.mustCtl(args...)
	h.waitListening(h.sandbox(name).NetNS, 80)
}

// waitListening waits until something listens on TCP port in the namespace.
func (h *host) waitListening(nsPath string, port int) {
	h.t.Helper()
	want := fmt.Sprintf(":%04X ", port)
	netnstest.Eventually(h.t, 5*time.Second, fmt.Sprintf("a listener on port %d in %s", port, nsPath), func() bool {
		out, _ := exec.Command("nsenter", "--net="+nsPath, "cat", "/proc/net/tcp", "/proc/net/tcp6").Output()
		return strings.Contains(string(out), want)
	})
}

// connect dials addr from inside a named namespace ("" = the host's) and
// returns the responder's reply, or an error.
func (h *host) connect(nsName, proto, addr string) (string, error) {
	self, _ := os.Executable()
	if nsName == "" {
		nsName = h.ns
	}
	cmd := netnstest.Cmd(nsName, "env", "FABRIC_E2E_HELPER=connect", self, proto, addr)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("connect %s %s from %s: %v: %s", proto, addr, nsName, err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

func (h *host) mustConnect(nsName, proto, addr string) string {
	h.t.Helper()
	out, err := h.connect(nsName, proto, addr)
	if err != nil {
		h.t.Fatal(err)
	}
	return out
}

// ping reports whether one ping from a namespace reaches ip.
func ping(nsName, ip string) bool {
	return netnstest.Cmd(nsName, "ping", "-c", "1", "-W", "1", ip).Run() == nil
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// helperMain is the test binary acting as a tiny server or client inside a
// namespace (FABRIC_E2E_HELPER=serve|connect).
func helperMain(mode string, args []string) int {
	switch mode {
	case "serve": // serve PORT: reply "<sandbox> <peer addr>" over TCP and UDP
		port := args[0]
		id := os.Getenv("FABRIC_SANDBOX")
		ln, err := net.Listen("tcp", ":"+port)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		pc, err := net.ListenPacket("udp", ":"+port)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		go func() {
			buf := make([]byte, 1500)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_ = n
				_, _ = pc.WriteTo([]byte(id+" "+from.String()+"\n"), from)
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return 1
			}
			go func(c net.Conn) {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				fmt.Fprintf(c, "%s %s\n", id, c.RemoteAddr())
				// Stay open while the peer keeps sending: a stream test.
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					_ = c.SetDeadline(time.Now().Add(5 * time.Second))
					fmt.Fprint(c, line)
				}
			}(c)
		}
	case "connect": // connect tcp|udp ADDR: print the reply line
		proto, addr := args[0], args[1]
		c, err := net.DialTimeout(proto, addr, 2*time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if proto == "udp" {
			if _, err := c.Write([]byte("hi\n")); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Print(line)
		return 0
	}
	if mode == "stream" {
		return streamMain(args[0], args[1])
	}
	if mode == "dns" {
		return fakeUpstreamMain(args[0])
	}
	fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
	return 2
}

// streamMain is a client of the serve helper's echo: for DURATION it sends
// a numbered line every 10 ms on one TCP connection and needs each echoed
// back within 2 s. Any error (a reset, a stall) fails it: the connection
// must survive whatever happens meanwhile.
func streamMain(addr, duration string) int {
	d, err := time.ParseDuration(duration)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	r := bufio.NewReader(c)
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := r.ReadString('\n'); err != nil {
		fmt.Fprintln(os.Stderr, "greeting:", err)
		return 1
	}
	n := 0
	for end := time.Now().Add(d); time.Now().Before(end); n++ {
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		want := fmt.Sprintf("line %d\n", n)
		if _, err := c.Write([]byte(want)); err != nil {
			fmt.Fprintf(os.Stderr, "after %d lines: write: %v\n", n, err)
			return 1
		}
		got, err := r.ReadString('\n')
		if err != nil || got != want {
			fmt.Fprintf(os.Stderr, "after %d lines: read %q: %v\n", n, got, err)
			return 1
		}
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Printf("ok %d lines\n", n)
	return 0
}
