package agent

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// TestSandboxCommandHoldsNoNamespaceMounts: a sandbox's command runs in a
// mount namespace of its own with the sandbox's resolv.conf, like under
// `ip netns exec`, but holding no namespace mount: `ip netns exec` copied
// every sandbox's /var/run/netns mount into every command's mount
// namespace and propagated each new one to all of them, so each namespace
// create and delete cost more the more sandboxes ran.
func TestSandboxCommandHoldsNoNamespaceMounts(t *testing.T) {
	netnstest.RequireRoot(t)
	a := newKernelTestAgent(t, t.TempDir(), newFake())
	defer a.Close()
	ctx := context.Background()
	var pids []int
	for range 3 {
		sb, err := a.CreateSandbox(ctx, api.SandboxCreate{Name: sandboxName(t, "hm"), Command: []string{"sleep", "600"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = a.RemoveSandbox(context.Background(), sb.Name) })
		pids = append(pids, sb.PID)
	}
	for _, pid := range pids {
		info, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/mountinfo")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(info), " /etc/resolv.conf ") {
			t.Errorf("command %d: no resolv.conf of its own:\n%s", pid, info)
		}
		for _, line := range strings.Split(string(info), "\n") {
			if strings.Contains(line, " - nsfs ") || strings.Contains(line, "/netns ") {
				t.Errorf("command %d holds a namespace mount: %s", pid, line)
			}
		}
	}
}

// newSpawnerTestAgent is a root-only agent on a fake datapath, with the
// command spawner it runs.
func newSpawnerTestAgent(t *testing.T) (*Agent, *spawner) {
	t.Helper()
	netnstest.RequireRoot(t)
	a := newKernelTestAgent(t, t.TempDir(), newFake())
	sp := a.procs.spawner()
	if sp == nil {
		a.Close()
		t.Fatal("the agent runs no command spawner")
	}
	return a, sp
}

// TestSandboxCommandsStartFromTheSpawner: named sandboxes' commands are
// started by the spawner, a process with a handful of descriptors, however
// many the agent holds (a fork copies the forking process's descriptor
// table, and the exec closes it again: 0.2 ms with 10, about 1 ms with
// 3,000, three per sandbox). They are still the agent's children: it reaps
// them and records their exit codes.
func TestSandboxCommandsStartFromTheSpawner(t *testing.T) {
	a, sp := newSpawnerTestAgent(t)
	defer a.Close()
	// Many descriptors in the agent, none in the spawner.
	for range 300 {
		f, err := os.Open("/dev/null")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
	}
	if n := openFDs(t, sp.cmd.Process.Pid); n > 16 {
		t.Errorf("the spawner holds %d descriptors", n)
	}
	ctx := context.Background()
	sb, err := a.CreateSandbox(ctx, api.SandboxCreate{Name: sandboxName(t, "sp"), Command: []string{"sleep", "600"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.RemoveSandbox(context.Background(), sb.Name) })
	if sp.started != 1 {
		t.Fatalf("the spawner started %d commands, want 1", sp.started)
	}
	if ppid := parentOf(t, sb.PID); ppid != os.Getpid() {
		t.Fatalf("command %d has parent %d, want the agent (%d)", sb.PID, ppid, os.Getpid())
	}
	if got := openFDs(t, sb.PID); got > 8 {
		t.Errorf("the command holds %d descriptors", got)
	}
	if err := unix.Kill(sb.PID, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var got api.Sandbox
	netnstest.Eventually(t, 10*time.Second, "the sandbox's command to be reported exited", func() bool {
		var err error
		if got, err = a.Sandbox(sb.Name); err != nil {
			t.Fatal(err)
		}
		return got.State == api.StateExited
	})
	if got.ExitCode == nil || *got.ExitCode != 128+9 {
		t.Fatalf("exit code %v, want 137", got.ExitCode)
	}
}

func openFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func parentOf(t *testing.T, pid int) int {
	t.Helper()
	return procStatus(t, strconv.Itoa(pid), "PPid")
}

// TestSandboxCommandsWithoutTheSpawner: when the spawner is gone (killed),
// the agent starts commands itself, the same way.
func TestSandboxCommandsWithoutTheSpawner(t *testing.T) {
	a, sp := newSpawnerTestAgent(t)
	defer a.Close()
	if err := sp.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_, _ = sp.cmd.Process.Wait()
	sb, err := a.CreateSandbox(context.Background(), api.SandboxCreate{Name: sandboxName(t, "ns"), Command: []string{"sleep", "600"}})
	if err != nil {
		t.Fatalf("create with the spawner gone: %v", err)
	}
	t.Cleanup(func() { _ = a.RemoveSandbox(context.Background(), sb.Name) })
	if sb.State != api.StateRunning || !alive(sb.PID, 0) {
		t.Fatalf("sandbox %+v: command not running", sb)
	}
	if a.procs.spawner() != nil {
		t.Error("the dead spawner is still in use")
	}
	info, err := os.ReadFile("/proc/" + strconv.Itoa(sb.PID) + "/mountinfo")
	if err != nil || !strings.Contains(string(info), " /etc/resolv.conf ") {
		t.Errorf("command started without its resolv.conf (%v)", err)
	}
}
