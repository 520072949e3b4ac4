package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns"
)

// Addresses of the lab; they exist only inside its namespaces.
const (
	h1IP     = "192.168.250.1"
	h2IP     = "192.168.250.2"
	brGW     = "10.77.1.1"
	c1aIP    = "10.77.1.2"
	c1bIP    = "10.77.1.3"
	portPerf = 5201  // iperf3 servers
	portLat  = 11111 // sockperf servers
	portHTTP = 8000  // fabricbench's HTTP server (connrate)

	// Host ports on h1. The baseline's nft table and fabric's own table
	// live side by side in h1, so they must not share ports.
	hpDNAT      = 8080 // nft DNAT -> c1a:5201 (as in baseline-lab.sh)
	hpProxy     = 8081 // docker-proxy -> c1a:5201 (on h1IP and on 127.0.0.1)
	hpDNATHTTP  = 8082 // nft DNAT -> c1a:8000
	hpProxyHTTP = 8083 // docker-proxy -> c1a:8000
	hpFabric    = 9080 // fabric -p 9080:5201 on fa
	hpFabHTTP   = 9081 // fabric -p 9081:8000 on fa
)

// Lab is the set of namespaces, processes and files of one run. Everything
// it makes is recorded so cleanup can remove it, also after an error.
type Lab struct {
	o      options
	prefix string // fbb-<pid>-
	dir    string // work dir: agent state, socket, logs, copy of this binary
	self   string // absolute path of the copy of this binary

	mu     sync.Mutex
	nsList []string // named namespaces we created
	procs  []*proc  // long-running processes we started
	once   sync.Once
	// downs run first in cleanup, last registered first: they remove what
	// owns namespaces with our prefix (the overlay section's labs) before
	// the generic cleanup kills what runs in them and deletes them.
	downs []func()

	// fabric
	fabricErr      error // why fabric rows are unavailable (nil: available)
	fabricWarnings []string
	agent          *proc
	socket         string
	client         *api.Client
	sandboxes      tracked // sandboxes of the h1 agent still to remove
	faIP, fbIP     string
	faNS, fbNS     string
	// kh is the kernel-datapath agent on k1 (kernelhost.go), made on
	// first use by the sections that compare against it.
	kh *kernelHost
}

// proc is a long-running child (server, proxy, agent).
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

func newLab(o options) *Lab {
	return &Lab{o: o, prefix: fmt.Sprintf("fbb-%d-", os.Getpid())}
}

func (l *Lab) ns(short string) string     { return l.prefix + short }
func (l *Lab) nsPath(short string) string { return netns.Path(l.ns(short)) }
func (l *Lab) secs() int                  { return l.o.secs }

// setup builds the whole topology: underlay, baseline bridge and servers,
// nft DNAT and docker-proxies (when a section needs them), and fabric. A
// fabric failure is recorded in l.fabricErr, not returned.
func (l *Lab) setup(ctx context.Context) error {
	dir, err := os.MkdirTemp("", l.prefix)
	if err != nil {
		return err
	}
	l.dir = dir
	if err := l.copySelf(); err != nil {
		return err
	}
	for _, n := range []string{"h1", "h2", "c1a", "c1b"} {
		if err := l.addNS(n); err != nil {
			return err
		}
	}
	h1, h2 := l.ns("h1"), l.ns("h2")
	steps := [][]string{
		{"link", "add", "u1", "netns", h1, "type", "veth", "peer", "name", "u2", "netns", h2},
		{"-n", h1, "addr", "add", h1IP + "/24", "dev", "u1"},
		{"-n", h1, "link", "set", "u1", "up"},
		{"-n", h2, "addr", "add", h2IP + "/24", "dev", "u2"},
		{"-n", h2, "link", "set", "u2", "up"},
		{"-n", h1, "link", "add", "br0", "type", "bridge"},
		{"-n", h1, "link", "set", "br0", "up"},
	}
	for _, c := range []struct{ name, ip string }{{"c1a", c1aIP}, {"c1b", c1bIP}} {
		cn := l.ns(c.name)
		steps = append(steps,
			[]string{"link", "add", "e0", "netns", cn, "type", "veth", "peer", "name", "v" + c.name, "netns", h1},
			[]string{"-n", h1, "link", "set", "v" + c.name, "master", "br0"},
			[]string{"-n", h1, "link", "set", "v" + c.name, "up"},
			[]string{"-n", cn, "addr", "add", c.ip + "/16", "dev", "e0"},
			[]string{"-n", cn, "link", "set", "e0", "up"},
		)
	}
	// The published-port baseline: gateway on br0, default route in c1a.
	steps = append(steps,
		[]string{"-n", h1, "addr", "add", brGW + "/16", "dev", "br0"},
		[]string{"-n", l.ns("c1a"), "route", "add", "default", "via", brGW},
	)
	for _, s := range steps {
		if _, err := runCmd(ctx, 10*time.Second, "ip", s...); err != nil {
			return err
		}
	}
	// Forwarding on h1; short-lived client connections (wrk with
	// "Connection: close") need the whole port range and TIME_WAIT reuse.
	for _, s := range []struct{ n, kv string }{
		{"h1", "net.ipv4.ip_forward=1"},
		{"h1", "net.ipv4.ping_group_range=0 2147483647"},
		{"h1", "net.ipv4.ip_local_port_range=1024 65535"},
		{"h1", "net.ipv4.tcp_tw_reuse=1"},
		{"h2", "net.ipv4.ip_local_port_range=1024 65535"},
		{"h2", "net.ipv4.tcp_tw_reuse=1"},
	} {
		if err := l.sysctl(ctx, l.nsPath(s.n), s.kv); err != nil {
			return err
		}
	}
	// Servers: iperf3 + sockperf in h2, c1b; iperf3 + sockperf + HTTP in c1a.
	for _, n := range []string{"h2", "c1a", "c1b"} {
		if _, err := l.startIn(ctx, n+"-servers", l.nsPath(n), l.self, serveArg); err != nil {
			return err
		}
	}
	for _, n := range []string{"h2", "c1a", "c1b"} {
		if err := waitListen(ctx, l.nsPath(n), 10*time.Second, portPerf, portLat, portHTTP); err != nil {
			return fmt.Errorf("servers in %s: %w", l.ns(n), err)
		}
	}
	if l.o.only["published"] || l.o.only["connrate"] || l.o.only["scale"] {
		if err := l.setupPublishedBaseline(ctx); err != nil {
			return err
		}
	}
	l.fabricErr = l.setupFabric(ctx)
	return nil
}

// setupPublishedBaseline adds the nft DNAT table of baseline-lab.sh (plus
// the HTTP port) and the docker-proxies on h1.
func (l *Lab) setupPublishedBaseline(ctx context.Context) error {
	rules := fmt.Sprintf(`table ip fbbbl {
  chain pre {
    type nat hook prerouting priority -100;
    tcp dport %d dnat to %s:%d
    tcp dport %d dnat to %s:%d
  }
}
`, hpDNAT, c1aIP, portPerf, hpDNATHTTP, c1aIP, portHTTP)
	if _, err := runCmdIn(ctx, 10*time.Second, strings.NewReader(rules), "nsenter", "--net="+l.nsPath("h1"), "nft", "-f", "-"); err != nil {
		return fmt.Errorf("baseline nft DNAT: %w", err)
	}
	dp := lookTool("docker-proxy")
	for _, p := range []struct {
		hostIP string
		hp, cp int
	}{
		{h1IP, hpProxy, portPerf}, {"127.0.0.1", hpProxy, portPerf}, {h1IP, hpProxyHTTP, portHTTP},
	} {
		if err := l.startDockerProxy(ctx, dp, p.hostIP, p.hp, p.cp); err != nil {
			return err
		}
	}
	return nil
}

// startDockerProxy runs docker-proxy in h1 the way dockerd does: it reports
// "0\n" (ready) or "1\n<error>" on file descriptor 3.
func (l *Lab) startDockerProxy(ctx context.Context, path, hostIP string, hostPort, ctrPort int) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	p, err := l.startProc(ctx, fmt.Sprintf("docker-proxy-%s-%d", hostIP, hostPort), func(c *exec.Cmd) { c.ExtraFiles = []*os.File{w} },
		"nsenter", "--net="+l.nsPath("h1"), path, "-proto", "tcp", "-host-ip", hostIP, "-host-port", strconv.Itoa(hostPort),
		"-container-ip", c1aIP, "-container-port", strconv.Itoa(ctrPort))
	w.Close()
	if err != nil {
		return err
	}
	msg := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(r, 4096))
		msg <- string(b)
	}()
	select {
	case m := <-msg:
		if strings.HasPrefix(m, "0") {
			return nil
		}
		return fmt.Errorf("docker-proxy %s:%d: %q%s", hostIP, hostPort, strings.TrimSpace(m), p.tail())
	case <-time.After(5 * time.Second):
		r.Close()
		return nil // an older/newer proxy that does not report: assume it is up
	}
}

func (l *Lab) copySelf() error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	src, err := os.Open(exe)
	if err != nil {
		return err
	}
	defer src.Close()
	l.self = filepath.Join(l.dir, "fabricbench")
	dst, err := os.OpenFile(l.self, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	// Helpers run from /tmp as root; keep the dir readable for them.
	if err := os.Chmod(l.dir, 0o755); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}

func (l *Lab) addNS(short string) error {
	name := l.ns(short)
	l.mu.Lock()
	l.nsList = append(l.nsList, name)
	l.mu.Unlock()
	if _, err := netns.CreateNamed(name); err != nil {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return nil
}

// subnetFreeOnH2 refuses a link to h2 on a subnet h2 already has an
// address in: h2 would route the new host's traffic to the older link.
func (l *Lab) subnetFreeOnH2(ctx context.Context, subnet string) error {
	out, err := runCmd(ctx, 10*time.Second, "ip", "-n", l.ns("h2"), "-o", "-4", "addr", "show", "to", subnet)
	if err != nil {
		return err
	}
	if strings.TrimSpace(out) != "" {
		return fmt.Errorf("h2 already has an address in %s (%s): another section's link uses that subnet", subnet, strings.TrimSpace(out))
	}
	return nil
}

func (l *Lab) sysctl(ctx context.Context, nsPath, kv string) error {
	_, err := runCmd(ctx, 10*time.Second, "nsenter", "--net="+nsPath, "sysctl", "-qw", kv)
	return err
}

// startIn starts a long-running process inside the namespace at nsPath.
func (l *Lab) startIn(ctx context.Context, name, nsPath string, argv ...string) (*proc, error) {
	return l.startProc(ctx, name, nil, append([]string{"nsenter", "--net=" + nsPath}, argv...)...)
}

// startProc starts a long-running process in its own process group (so a
// Ctrl-C reaches only fabricbench, which then stops everything in order)
// with its output in a log file, and records it for cleanup.
func (l *Lab) startProc(_ context.Context, name string, mod func(*exec.Cmd), argv ...string) (*proc, error) {
	logPath := filepath.Join(l.dir, strings.NewReplacer("/", "_", ":", "_").Replace(name)+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	c := exec.Command(argv[0], argv[1:]...)
	c.Stdout, c.Stderr = f, f
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if mod != nil {
		mod(c)
	}
	if err := c.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: c, done: make(chan struct{}), log: logPath}
	go func() { _ = c.Wait(); close(p.done) }()
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	return p, nil
}

// atCleanup registers fn to run at the start of cleanup (see Lab.downs).
func (l *Lab) atCleanup(fn func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.downs = append(l.downs, fn)
}

// tail returns the last lines of the process's log, for error messages.
func (p *proc) tail() string {
	b, err := os.ReadFile(p.log)
	if err != nil || len(bytes.TrimSpace(b)) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return "; log: " + strings.Join(lines, " | ")
}

// stop sends SIGTERM to the process group, then SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	pid := p.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(2 * time.Second):
		}
	}
}

// cleanup removes everything the run made; it runs once, also after errors
// and on SIGINT, and every step is bounded in time.
func (l *Lab) cleanup() {
	l.once.Do(func() {
		l.mu.Lock()
		downs := append([]func(){}, l.downs...)
		l.mu.Unlock()
		for i := len(downs) - 1; i >= 0; i-- {
			downs[i]()
		}
		l.cleanupFabric()
		l.mu.Lock()
		procs := append([]*proc(nil), l.procs...)
		l.mu.Unlock()
		var wg sync.WaitGroup
		for _, p := range procs {
			wg.Add(1)
			go func() { defer wg.Done(); p.stop(3 * time.Second) }()
		}
		wg.Wait()
		// Whatever still runs inside our namespaces (sandbox commands the
		// agent started, which outlive it by design) was started for this
		// run: end it by PID, then remove the namespaces.
		names := l.ourNamespaces()
		killInNamespaces(names)
		for _, n := range names {
			if err := netns.DeleteNamed(n); err != nil {
				fmt.Fprintf(os.Stderr, "fabricbench: cleanup: %v\n", err)
			}
			// The agent's per-sandbox resolv.conf (sandboxes of the h2
			// agent are not removed through its API).
			_ = os.RemoveAll(filepath.Join("/etc/netns", n))
		}
		if l.dir != "" {
			_ = os.RemoveAll(l.dir)
		}
	})
}

// ourNamespaces lists the namespaces we created plus any named namespace
// with our prefix (fabric sandboxes are named after it).
func (l *Lab) ourNamespaces() []string {
	l.mu.Lock()
	names := append([]string(nil), l.nsList...)
	l.mu.Unlock()
	ents, _ := os.ReadDir(netns.RunDir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), l.prefix) && !contains(names, e.Name()) {
			names = append(names, e.Name())
		}
	}
	return names
}

// killInNamespaces ends processes whose network namespace is one of names.
func killInNamespaces(names []string) {
	inos := map[uint64]bool{}
	for _, n := range names {
		if id, err := netns.IDOf(netns.Path(n)); err == nil {
			inos[id.Ino] = true
		}
	}
	if len(inos) == 0 {
		return
	}
	find := func() []int {
		var pids []int
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			var st syscall.Stat_t
			if syscall.Stat("/proc/"+e.Name()+"/ns/net", &st) == nil && inos[st.Ino] {
				pids = append(pids, pid)
			}
		}
		return pids
	}
	for i, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL, syscall.SIGKILL} {
		pids := find()
		if len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, sig)
		}
		time.Sleep(time.Duration(i+1) * 300 * time.Millisecond)
	}
}

// runCmd runs a short command with a time limit and returns its stdout; the
// error carries stderr.
func runCmd(ctx context.Context, limit time.Duration, name string, args ...string) (string, error) {
	return runCmdIn(ctx, limit, nil, name, args...)
}

func runCmdIn(ctx context.Context, limit time.Duration, stdin io.Reader, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	c := exec.CommandContext(ctx, name, args...)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c.Cancel = func() error { return syscall.Kill(-c.Process.Pid, syscall.SIGKILL) }
	c.WaitDelay = 2 * time.Second
	c.Stdin = stdin
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	if err != nil {
		msg := strings.TrimSpace(errb.String())
		if msg == "" {
			msg = lastLines(out.String(), 3)
		}
		if ctx.Err() == context.DeadlineExceeded {
			err = fmt.Errorf("timed out after %s: %w", limit, ctx.Err())
		}
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return out.String(), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// waitListen waits until TCP ports listen in the namespace at nsPath.
func waitListen(ctx context.Context, nsPath string, limit time.Duration, ports ...int) error {
	deadline := time.Now().Add(limit)
	for {
		var missing []int
		err := netns.Do(nsPath, func() error {
			listening := map[int]bool{}
			for _, f := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
				readListeners(f, listening)
			}
			for _, p := range ports {
				if !listening[p] {
					missing = append(missing, p)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ports %v not listening after %s", missing, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// readListeners adds the ports in state LISTEN (0A) of a /proc/net/tcp file.
func readListeners(path string, into map[int]bool) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || fields[3] != "0A" {
			continue
		}
		i := strings.LastIndexByte(fields[1], ':')
		if i < 0 {
			continue
		}
		if p, err := strconv.ParseUint(fields[1][i+1:], 16, 16); err == nil {
			into[int(p)] = true
		}
	}
}
