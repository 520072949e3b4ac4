package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/agent/agentstate"
	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/store"
	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// TestSocketIsPrivateFromCreation: the API socket has mode 0600 the moment
// it is bound, not after a chmod another user could race.
func TestSocketIsPrivateFromCreation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "api.sock")
	var mode os.FileMode
	testHookListened = func(p string) {
		if fi, err := os.Stat(p); err == nil {
			mode = fi.Mode().Perm()
		}
	}
	t.Cleanup(func() { testHookListened = nil })
	ln, err := listenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if mode != 0o600 {
		t.Fatalf("socket mode right after bind: %v, want 0600", mode)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode: %v %v, want 0600", fi.Mode(), err)
	}
	// The process umask is back to what it was.
	old := syscall.Umask(0o022)
	syscall.Umask(old)
	if old == 0o177 {
		t.Fatal("umask 0177 left in place")
	}
}

// startIn starts argv (a new session) with its network namespace at
// nsPath ("" = this one) and kills it when the test ends.
func startIn(t *testing.T, nsPath string, argv ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var err error
	if nsPath == "" {
		err = cmd.Start()
	} else {
		err = netns.Do(nsPath, cmd.Start)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}

// newSandboxTestAgent is a root-only agent on a fake datapath with one
// sandbox, named from prefix, whose namespace is removed when the test ends.
func newSandboxTestAgent(t *testing.T, prefix string) (*Agent, api.Sandbox) {
	t.Helper()
	netnstest.RequireRoot(t)
	a := newKernelTestAgent(t, t.TempDir(), newFake())
	name := sandboxName(t, prefix)
	t.Cleanup(func() { netnstest.Remove(name) })
	sb, err := a.CreateSandbox(context.Background(), api.SandboxCreate{Name: name})
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	return a, sb
}

// TestSetProcessOnlyInSandboxNamespace: a client may register only a
// process that is inside the sandbox's namespace.
func TestSetProcessOnlyInSandboxNamespace(t *testing.T) {
	a, sb := newSandboxTestAgent(t, "sp")
	defer a.Close()
	name := sb.Name
	outside := startIn(t, "", "sleep", "60")
	start := time.Now()
	if err := a.SetProcess(name, outside.Process.Pid); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "namespace") {
		t.Fatalf("SetProcess of a process outside the sandbox: %v, want invalid (namespace)", err)
	}
	if took := time.Since(start); took > setProcessWait+2*time.Second {
		t.Fatalf("refusal took %v", took)
	}
	if err := a.SetProcess(name, os.Getpid()); !errors.Is(err, ErrInvalid) {
		t.Fatalf("SetProcess of the agent's own process: %v, want invalid", err)
	}
	inside := startIn(t, sb.NetNS, "sleep", "60")
	if err := a.SetProcess(name, inside.Process.Pid); err != nil {
		t.Fatalf("SetProcess of a process in the sandbox: %v", err)
	}
	if got, _ := a.Sandbox(name); got.PID != inside.Process.Pid || got.State != api.StateRunning {
		t.Fatalf("sandbox after SetProcess: %+v", got)
	}
}

// TestSandboxRmSignalsOnlyItsProcess: removing a sandbox whose process a
// client registered stops that process only, not the rest of its process
// group outside the sandbox.
func TestSandboxRmSignalsOnlyItsProcess(t *testing.T) {
	a, sb := newSandboxTestAgent(t, "sr")
	defer a.Close()
	name := sb.Name
	// A group leader that leaves a child on the host, then enters the
	// sandbox (as `ip netns exec` does).
	leader := startIn(t, "", "sh", "-c", "sleep 60 & exec nsenter --net="+sb.NetNS+" sleep 60")
	pid := leader.Process.Pid
	child := 0
	netnstest.Eventually(t, 5*time.Second, "the leader's child and namespace switch", func() bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		if f := strings.Fields(string(b)); len(f) > 0 {
			child, _ = strconv.Atoi(f[0])
		}
		in, _ := inNamespace(pid, sb.NetNS)
		return child > 0 && in
	})
	t.Cleanup(func() { _ = syscall.Kill(child, syscall.SIGKILL) })
	if pgid, _ := syscall.Getpgid(child); pgid != pid {
		t.Fatalf("child %d in group %d, want %d", child, pgid, pid)
	}
	if err := a.SetProcess(name, pid); err != nil {
		t.Fatal(err)
	}
	if err := a.RemoveSandbox(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	if alive(pid, 0) {
		t.Fatal("the sandbox's process survived sandbox rm")
	}
	if !alive(child, 0) {
		t.Fatal("sandbox rm killed a process of the same group outside the sandbox")
	}
}

// TestRollbackStopsAnUnrecordedCommand: an agent killed after it started
// a sandbox's command and before it recorded the PID leaves a "creating"
// record without one; the restarted agent rolls the sandbox back and
// stops the command too, which would otherwise run on, holding the
// namespace (and the endpoint's pair in it).
func TestRollbackStopsAnUnrecordedCommand(t *testing.T) {
	dir, name, pid := unrecordedCommand(t)
	b := newKernelTestAgent(t, dir, newFake())
	defer b.Close()
	if _, err := b.Sandbox(name); !errors.Is(err, ErrNotFound) {
		t.Fatalf("sandbox after the restart: %v, want it rolled back", err)
	}
	netnstest.Eventually(t, 5*time.Second, "the unrecorded command to stop", func() bool { return !alive(pid, 0) })
}

// TestResetStopsAnUnrecordedCommand: fabricd reset, run on the state a
// killed agent left (as above), stops the unrecorded command as well as
// removing the sandbox's namespace.
func TestResetStopsAnUnrecordedCommand(t *testing.T) {
	dir, name, pid := unrecordedCommand(t)
	removed, err := ResetSandboxes(dir, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil || removed != 1 {
		t.Fatalf("ResetSandboxes: %d removed, %v; want 1", removed, err)
	}
	if _, err := os.Stat(netns.Path(name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("namespace of %s after reset: %v", name, err)
	}
	netnstest.Eventually(t, 5*time.Second, "the unrecorded command to stop", func() bool { return !alive(pid, 0) })
}

// unrecordedCommand makes, in a new state directory, what an agent killed
// between starting a sandbox's command and recording its PID leaves: the
// command running in the sandbox's namespace and a "creating" record
// without the PID. The command is killed when the test ends.
func unrecordedCommand(t *testing.T) (dir, name string, pid int) {
	t.Helper()
	netnstest.RequireRoot(t)
	dir = t.TempDir()
	a := newKernelTestAgent(t, dir, newFake())
	name = sandboxName(t, "uc")
	sb, err := a.CreateSandbox(context.Background(), api.SandboxCreate{Name: name, Command: []string{"sleep", "60"}})
	a.Close()
	if err != nil {
		t.Fatal(err)
	}
	pid = sb.PID
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	if !alive(pid, 0) {
		t.Fatal("the command does not run")
	}
	st, err := store.Open(filepath.Join(dir, agentstate.FileName), []string{bucketNetworks, bucketSandboxes, bucketEndpoints}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	err = st.Update(func(tx *store.Tx) error {
		var rec sandboxRec
		if ok, err := tx.Get(bucketSandboxes, name, &rec); !ok || err != nil {
			return fmt.Errorf("record of %s: found %v, %w", name, ok, err)
		}
		rec.PID, rec.PIDStart, rec.LogPath, rec.Phase = 0, 0, "", phaseCreating
		return tx.Put(bucketSandboxes, name, rec)
	})
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	return dir, name, pid
}
