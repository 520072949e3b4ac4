package lab_test

// End-to-end tests: the real fabricctl and fabricd binaries build labs in
// network namespaces. Each test has its own lab name and underlay subnet,
// and removes its lab when it ends, even if it fails.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/lab"
	"github.com/fabricnet/fabric/cmd/internal/testbin"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

var binDir string

func TestMain(m *testing.M) {
	os.Exit(testbin.Main(m, "fabric-lab-bin", "lab: not root: the end-to-end tests skip (they need network namespaces); unit tests run", &binDir))
}

// testLab is one lab under test.
type testLab struct {
	t      *testing.T
	name   string
	subnet string
	third  int // third octet of the subnet
}

func newTestLab(t *testing.T) *testLab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (network namespaces, links, bpffs); run the suite as root")
	}
	b := make([]byte, 3)
	rand.Read(b)
	n, _ := rand.Int(rand.Reader, big.NewInt(250))
	third := int(n.Int64()) + 1
	l := &testLab{t: t, name: "t" + hex.EncodeToString(b), third: third,
		subnet: fmt.Sprintf("10.99.%d.0/24", third)}
	t.Cleanup(l.cleanup)
	return l
}

// ip returns node i's underlay address.
func (l *testLab) ip(i int) string { return fmt.Sprintf("10.99.%d.%d", l.third, 10+i) }

func (l *testLab) netns(i int) string { return fmt.Sprintf("%s-n%d", l.name, i) }

func (l *testLab) dir() string { return filepath.Join(lab.DefaultRoot, l.name) }

// ctl runs fabricctl with args; lab commands get --name of this lab.
func (l *testLab) ctl(args ...string) (stdout, stderr string, code int) {
	for i, a := range args {
		if a == "lab" {
			args = append(append(args[:i:i], "lab", "--name", l.name), args[i+1:]...)
			break
		}
	}
	env := append(withoutFabricEnv(os.Environ()), "PATH="+binDir+":"+os.Getenv("PATH"))
	stdout, stderr, code = testbin.Run(90*time.Second, env, filepath.Join(binDir, "fabricctl"), args...)
	l.t.Logf("fabricctl %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, stdout, stderr)
	return stdout, stderr, code
}

func (l *testLab) mustCtl(args ...string) string {
	l.t.Helper()
	out, _, code := l.ctl(args...)
	if code != 0 {
		l.t.Fatalf("fabricctl %s: exit %d", strings.Join(args, " "), code)
	}
	return out
}

func (l *testLab) up(nodes int, datapath string) {
	l.t.Helper()
	l.mustCtl("lab", "up", "--nodes", fmt.Sprint(nodes), "--datapath", datapath, "--subnet", l.subnet)
}

func (l *testLab) status() (lab.Status, int) {
	l.t.Helper()
	out, _, code := l.ctl("-o", "json", "lab", "status")
	var st lab.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		l.t.Fatalf("lab status -o json: %v: %q", err, out)
	}
	return st, code
}

func (l *testLab) cleanup() {
	if l.t.Failed() {
		logs, _ := filepath.Glob(filepath.Join(l.dir(), "n*", "fabricd.log"))
		for _, p := range logs {
			b, _ := os.ReadFile(p)
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			l.t.Logf("%s (tail):\n%s", p, b)
		}
	}
	if _, _, code := l.ctl("lab", "down"); code != 0 {
		l.t.Errorf("cleanup: lab down failed")
	}
}

// assertGone checks that nothing of the lab is left: namespaces, bpffs
// directories, the lab directory, agents.
func (l *testLab) assertGone(extraNetns ...string) {
	l.t.Helper()
	entries, _ := os.ReadDir("/var/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), l.name) {
			l.t.Errorf("namespace %s left", e.Name())
		}
	}
	for _, ns := range extraNetns {
		if _, err := os.Lstat(filepath.Join("/var/run/netns", ns)); err == nil {
			l.t.Errorf("sandbox namespace %s left", ns)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(lab.BPFDir, "fabric-lab-"+l.name+"-*")); len(m) > 0 {
		l.t.Errorf("bpffs directories left: %v", m)
	}
	if _, err := os.Stat(l.dir()); !os.IsNotExist(err) {
		l.t.Errorf("lab directory %s left (%v)", l.dir(), err)
	}
	if pids := processesMentioning(l.dir()); len(pids) > 0 {
		l.t.Errorf("processes of the lab still run: %v", pids)
	}
}

// processesMentioning lists live processes whose command line contains s.
func processesMentioning(s string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte(s)) {
			out = append(out, pid)
		}
	}
	return out
}

func withoutFabricEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, "FABRIC_") {
			out = append(out, kv)
		}
	}
	return out
}

// inNode runs a command in a node's namespace the way lab exec does.
func (l *testLab) inNode(i int, args ...string) error {
	cmd := exec.Command("nsenter", append([]string{"--net=/var/run/netns/" + l.netns(i)}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s in %s: %w\n%s", strings.Join(args, " "), l.netns(i), err, out)
	}
	return nil
}

// waitDead waits (bounded) until pid is gone or a zombie.
func waitDead(t *testing.T, pid int) {
	t.Helper()
	netnstest.Eventually(t, 5*time.Second, fmt.Sprintf("process %d to die", pid), func() bool { return !netnstest.ProcessRunning(pid) })
}

func TestLabLifecycle(t *testing.T) {
	l := newTestLab(t)
	out := l.mustCtl("lab", "up", "--nodes", "3", "--datapath", "kernel", "--subnet", l.subnet)
	for i := 1; i <= 3; i++ {
		want := fmt.Sprintf("fabricctl --socket %s/n%d/fabricd.sock status", l.dir(), i)
		if !strings.Contains(out, want) {
			t.Errorf("up does not say how to reach node %d (%q)", i, want)
		}
	}
	if !strings.Contains(out, "fabricctl lab --name "+l.name+" exec n1") {
		t.Errorf("up does not mention lab exec")
	}

	// A second up of the same lab is refused and changes nothing.
	_, errOut, code := l.ctl("lab", "up", "--nodes", "1", "--subnet", l.subnet)
	if code != 1 || !strings.Contains(errOut, "already exists") || !strings.Contains(errOut, "lab down --name "+l.name) {
		t.Errorf("second up: exit %d, stderr %q", code, errOut)
	}

	l.checkThreeNodesUp(t)
	l.checkExec(t)
	// A sandbox on a node, which down must remove.
	sb := l.name + "sb"
	l.mustCtl("lab", "exec", "n1", "--", "fabricctl", "run", "-d", "--name", sb, "--", "sleep", "300")
	sbNetNS := l.netns(1) + "-" + sb // the node's prefix: sandbox names are per node
	if _, err := os.Lstat("/var/run/netns/" + sbNetNS); err != nil {
		t.Fatalf("sandbox namespace: %v", err)
	}

	st, code := l.status()
	if code != 0 || len(st.Nodes) != 3 || st.State != lab.StateUp {
		t.Fatalf("status: exit %d, %+v", code, st)
	}
	for _, n := range st.Nodes {
		if !n.Alive || n.State != lab.NodeRunning || n.Datapath != "kernel" || n.PID == 0 || !n.NetNSOK {
			t.Errorf("node %s: %+v", n.ID, n)
		}
	}

	// A dead agent shows as dead, and status fails.
	dead := st.Nodes[2]
	if err := syscall.Kill(dead.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitDead(t, dead.PID)
	st, code = l.status()
	if code != 1 || st.Nodes[2].Alive || st.Nodes[2].State != lab.NodeDead || !st.Nodes[0].Alive || !st.Nodes[1].Alive {
		t.Errorf("after kill -9 of n3: exit %d, %+v", code, st.Nodes)
	}
	table, _, _ := l.ctl("lab", "status")
	if !strings.Contains(table, "dead") {
		t.Errorf("status table does not show the dead node: %q", table)
	}

	out = l.mustCtl("lab", "down")
	if !strings.Contains(out, "Lab "+l.name+" removed") {
		t.Errorf("down: %q", out)
	}
	l.assertGone(sbNetNS)
	if _, err := os.Stat("/etc/netns/" + sbNetNS); !os.IsNotExist(err) {
		t.Errorf("resolv.conf dir of the sandbox left: %v", err)
	}
	// Twice is fine; the second one has nothing to do.
	if out := l.mustCtl("lab", "down"); !strings.Contains(out, "nothing to remove") {
		t.Errorf("second down: %q", out)
	}
	if _, errOut, code := l.ctl("lab", "status"); code != 1 || !strings.Contains(errOut, "no such lab") {
		t.Errorf("status of a removed lab: exit %d, %q", code, errOut)
	}
}

// checkThreeNodesUp: every agent of a 3-node kernel lab answers on its
// socket with its own node name, and the nodes reach each other and the
// gateway over the underlay.
func (l *testLab) checkThreeNodesUp(t *testing.T) {
	t.Helper()
	for i := 1; i <= 3; i++ {
		sock := filepath.Join(l.dir(), fmt.Sprintf("n%d", i), "fabricd.sock")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := api.NewClient(sock).Status(ctx)
		cancel()
		if err != nil || st.Node != l.netns(i) || st.Datapath != "kernel" {
			t.Errorf("node %d status: %+v, %v", i, st, err)
		}
	}
	for i := 1; i <= 3; i++ {
		for j := 1; j <= 3; j++ {
			if i != j {
				if err := l.inNode(i, "ping", "-c", "1", "-W", "2", l.ip(j)); err != nil {
					t.Error(err)
				}
			}
		}
	}
	if err := l.inNode(2, "ping", "-c", "1", "-W", "2", fmt.Sprintf("10.99.%d.1", l.third)); err != nil {
		t.Error(err)
	}
}

// checkExec: lab exec points fabricctl at the node's agent, passes the
// command's exit code on and names the nodes when asked for a missing one.
func (l *testLab) checkExec(t *testing.T) {
	t.Helper()
	out := l.mustCtl("lab", "exec", "n2", "--", "fabricctl", "status")
	if !strings.Contains(out, l.netns(2)) {
		t.Errorf("lab exec n2 -- fabricctl status talked to another node: %q", out)
	}
	if _, _, code := l.ctl("lab", "exec", "n1", "--", "sh", "-c", "exit 7"); code != 7 {
		t.Errorf("lab exec exit code %d, want the command's 7", code)
	}
	if _, errOut, code := l.ctl("lab", "exec", "n9", "--", "true"); code != 1 || !strings.Contains(errOut, "its nodes are n1, n2, n3") {
		t.Errorf("lab exec on a missing node: exit %d, %q", code, errOut)
	}
}

// After every agent died (kill -9) the manifest and the agents' state
// files are all down has; it still removes everything, sandboxes included.
func TestLabDownAfterCrash(t *testing.T) {
	l := newTestLab(t)
	l.up(2, "kernel")
	var sbs []string
	var cmds []int
	for i := 1; i <= 2; i++ {
		sb := fmt.Sprintf("%ssb%d", l.name, i)
		l.mustCtl("lab", "exec", fmt.Sprint(i), "--", "fabricctl", "run", "-d", "--name", sb, "--", "sleep", "300")
		var got []api.Sandbox
		out := l.mustCtl("lab", "exec", fmt.Sprint(i), "--", "fabricctl", "sandbox", "inspect", sb)
		if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != 1 || got[0].PID == 0 {
			t.Fatalf("inspect %s: %v %q", sb, err, out)
		}
		sbs, cmds = append(sbs, l.netns(i)+"-"+sb), append(cmds, got[0].PID)
	}
	// A foreground shell left on a node must not keep its namespace alive.
	shell := exec.Command("nsenter", "--net=/var/run/netns/"+l.netns(1), "sleep", "300")
	if err := shell.Start(); err != nil {
		t.Fatal(err)
	}
	go shell.Wait()

	st, _ := l.status()
	for _, n := range st.Nodes {
		syscall.Kill(n.PID, syscall.SIGKILL)
		waitDead(t, n.PID)
	}
	if st, code := l.status(); code != 1 || st.Nodes[0].Alive || st.Nodes[1].Alive {
		t.Fatalf("after the crash: exit %d, %+v", code, st.Nodes)
	}

	_, errOut, code := l.ctl("lab", "down")
	if code != 0 {
		t.Fatalf("down after a crash: exit %d", code)
	}
	if !strings.Contains(errOut, "state file") {
		t.Errorf("down does not say it fell back to the agents' state files: %q", errOut)
	}
	l.assertGone(sbs...)
	for _, pid := range append(cmds, shell.Process.Pid) {
		waitDead(t, pid)
	}
}

// An agent that does not come up: up says why (its log) and how to clean
// up, and down removes what up made.
func TestLabUpAgentFails(t *testing.T) {
	l := newTestLab(t)
	fake := filepath.Join(t.TempDir(), "fabricd")
	script := "#!/bin/sh\necho \"fake fabricd: cannot start ($#)\" >&2\nexit 3\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, errOut, code := l.ctl("lab", "up", "--nodes", "2", "--fabricd", fake, "--subnet", l.subnet)
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	for _, want := range []string{"fake fabricd: cannot start", "exited during start-up", "fabricctl lab down --name " + l.name} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q", want)
		}
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("up took %s to notice a dead agent", d)
	}
	if _, _, code := l.ctl("lab", "status"); code != 1 {
		t.Errorf("status of a failed lab: exit %d", code)
	}
	l.mustCtl("lab", "down")
	l.assertGone()
}

// With the eBPF datapath, down also removes the pins (and so detaches the
// programs) the agents left under their bpf-roots.
func TestLabEBPFPinsRemoved(t *testing.T) {
	l := newTestLab(t)
	_, errOut, code := l.ctl("lab", "up", "--nodes", "1", "--datapath", "ebpf", "--subnet", l.subnet)
	if code != 0 {
		if strings.Contains(errOut, "ebpf datapath") {
			t.Skipf("the eBPF datapath does not start on this host: %s", errOut)
		}
		t.Fatalf("up: exit %d", code)
	}
	pins := filepath.Join(lab.BPFDir, "fabric-lab-"+l.name+"-n1")
	if entries, err := os.ReadDir(pins); err != nil || len(entries) == 0 {
		t.Errorf("no pins under %s: %v", pins, err)
	}
	l.mustCtl("lab", "down")
	l.assertGone()
}

// Labs with different names live side by side; down of one leaves the
// other alone.
func TestTwoLabsSideBySide(t *testing.T) {
	a, b := newTestLab(t), newTestLab(t)
	b.subnet = a.subnet // the underlays are separate namespaces: no clash
	b.third = a.third
	a.up(1, "kernel")
	b.up(1, "kernel")
	a.mustCtl("lab", "down")
	a.assertGone()
	if st, code := b.status(); code != 0 || !st.Nodes[0].Alive {
		t.Errorf("the other lab: exit %d, %+v", code, st.Nodes)
	}
	if err := b.inNode(1, "ping", "-c", "1", "-W", "2", b.ip(1)); err != nil {
		t.Error(err)
	}
}
