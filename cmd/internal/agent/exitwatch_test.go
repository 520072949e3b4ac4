package agent

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// exitLog records what an exitWatcher reports.
type exitLog struct {
	mu    sync.Mutex
	codes map[string]*int
}

func (l *exitLog) exited(name string, _ int, code *int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.codes[name] = code
}

func (l *exitLog) get(name string) (code *int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	code, ok = l.codes[name]
	return code, ok
}

func newTestProcesses(t *testing.T) (*processes, *exitLog) {
	t.Helper()
	log := &exitLog{codes: map[string]*int{}}
	w, err := newExitWatcher(log.exited)
	if err != nil {
		t.Fatal(err)
	}
	p := &processes{logDir: t.TempDir(), w: w}
	t.Cleanup(p.close)
	return p, log
}

// osThreads counts the threads of this process.
func osThreads(t testing.TB) int {
	t.Helper()
	return procStatus(t, "self", "Threads")
}

// procStatus reads the number field of /proc/PROC/status (PROC a PID or
// "self").
func procStatus(t testing.TB, proc, field string) int {
	t.Helper()
	path := "/proc/" + proc + "/status"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	t.Fatalf("no %s: in %s", field, path)
	return 0
}

// TestCommandsNoThreadEach starts many commands and checks that watching
// them holds no OS thread each (a blocking wait per command did), that
// every exit is reported with its code once killed, and that the children
// are reaped (no zombie left).
func TestCommandsNoThreadEach(t *testing.T) {
	const n = 150
	p, log := newTestProcesses(t)
	before := osThreads(t)
	pids := make([]int, n)
	for i := range n {
		pid, _, _, err := p.start("c"+strconv.Itoa(i), []string{"sleep", "60"}, launch{in: (*exec.Cmd).Start})
		if err != nil {
			t.Fatal(err)
		}
		pids[i] = pid
		t.Cleanup(func() { _ = syscall.Kill(-pid, syscall.SIGKILL) })
	}
	if got := p.w.count(); got != n {
		t.Fatalf("%d commands watched, want %d", got, n)
	}
	if got := osThreads(t); got > before+8 {
		t.Errorf("%d OS threads with %d commands watched, %d before: want no thread per command", got, n, before)
	}
	for _, pid := range pids {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
	netnstest.Eventually(t, 30*time.Second, "every exit reported", func() bool { return p.w.count() == 0 })
	for i := range n {
		name := "c" + strconv.Itoa(i)
		netnstest.Eventually(t, 10*time.Second, name+"'s exit", func() bool { _, ok := log.get(name); return ok })
		if code, _ := log.get(name); code == nil || *code != 128+int(syscall.SIGKILL) {
			t.Fatalf("%s exit code %v, want %d", name, code, 128+int(syscall.SIGKILL))
		}
	}
	for _, pid := range pids {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
			if _, state, _ := procStat(pid); state == "Z" {
				t.Fatalf("process %d left a zombie", pid)
			}
		}
	}
}

// TestCommandExitCodeAndLog: a command's exit status and its output reach
// the watcher's report and the log file.
func TestCommandExitCodeAndLog(t *testing.T) {
	p, log := newTestProcesses(t)
	_, _, logPath, err := p.start("sh1", []string{"sh", "-c", "echo out; echo err >&2; exit 7"}, launch{in: (*exec.Cmd).Start})
	if err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 10*time.Second, "exit reported", func() bool { _, ok := log.get("sh1"); return ok })
	if code, _ := log.get("sh1"); code == nil || *code != 7 {
		t.Fatalf("exit code %v, want 7", code)
	}
	data, err := os.ReadFile(logPath)
	if err != nil || string(data) != "out\nerr\n" {
		t.Fatalf("log %q (%v), want out and err", data, err)
	}
}

// TestWatchAdoptedProcess: a process that is not the watcher's to reap
// (started by an earlier agent) is reported without a code when it exits,
// and one whose start time does not match is reported gone at once.
func TestWatchAdoptedProcess(t *testing.T) {
	p, log := newTestProcesses(t)
	p.a = &Agent{}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	start, err := processStart(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	p.watch("adopted", cmd.Process.Pid, start)
	p.watch("reused", cmd.Process.Pid, start+1)
	netnstest.Eventually(t, 10*time.Second, "the reused PID reported gone", func() bool { _, ok := log.get("reused"); return ok })
	if _, ok := log.get("adopted"); ok {
		t.Fatal("a running process was reported exited")
	}
	_ = cmd.Process.Kill()
	netnstest.Eventually(t, 10*time.Second, "the adopted process's exit", func() bool { _, ok := log.get("adopted"); return ok })
	if code, _ := log.get("adopted"); code != nil {
		t.Fatalf("code %d for a process the agent could not reap, want none", *code)
	}
}

// TestStopTermThenKill: stop ends a command at SIGTERM without waiting
// out the grace period, and kills one that ignores SIGTERM once the grace
// period is over; both are then reported exited by the watcher.
func TestStopTermThenKill(t *testing.T) {
	p, log := newTestProcesses(t)
	pid, start, _, err := p.start("polite", []string{"sleep", "60"}, launch{in: (*exec.Cmd).Start})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := p.stop(pid, start, 20*time.Second, true, ""); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took > 10*time.Second {
		t.Fatalf("stop of a command that exits at SIGTERM took %v", took)
	}
	if alive(pid, start) {
		t.Fatal("command runs after stop")
	}
	pid, start, logPath, err := p.start("stubborn", []string{"sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"}, launch{in: (*exec.Cmd).Start})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(-pid, syscall.SIGKILL) })
	netnstest.Eventually(t, 10*time.Second, "the trap to be set", func() bool {
		data, _ := os.ReadFile(logPath)
		return strings.Contains(string(data), "ready")
	})
	const grace = 300 * time.Millisecond
	t0 = time.Now()
	if err := p.stop(pid, start, grace, true, ""); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took < grace {
		t.Fatalf("stop returned after %v, before the grace period of a command that ignores SIGTERM", took)
	}
	if alive(pid, start) {
		t.Fatal("command ignoring SIGTERM runs after stop")
	}
	for _, name := range []string{"polite", "stubborn"} {
		netnstest.Eventually(t, 10*time.Second, name+"'s exit report", func() bool { _, ok := log.get(name); return ok })
	}
	if code, _ := log.get("stubborn"); code == nil || *code != 128+int(syscall.SIGKILL) {
		t.Fatalf("stubborn exit code %v, want %d", code, 128+int(syscall.SIGKILL))
	}
}

// TestRestartedAgentReadoptsCommands: commands outlive the agent; a new
// agent on the same state watches them again (by PID and start time) and
// records their exit, and a command that exits with code 3 under the agent
// that started it is recorded with its code.
func TestRestartedAgentReadoptsCommands(t *testing.T) {
	netnstest.RequireRoot(t)
	dir := t.TempDir()
	a := newKernelTestAgent(t, dir, newFake())
	ctx := context.Background()
	long, short := sandboxName(t, "ra"), sandboxName(t, "rb")
	sb, err := a.CreateSandbox(ctx, api.SandboxCreate{Name: long, Command: []string{"sleep", "60"}})
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(-sb.PID, syscall.SIGKILL) })
	if _, err := a.CreateSandbox(ctx, api.SandboxCreate{Name: short, Command: []string{"sh", "-c", "exit 3"}}); err != nil {
		a.Close()
		t.Fatal(err)
	}
	netnstest.Eventually(t, 10*time.Second, "the short command's exit", func() bool {
		s, err := a.Sandbox(short)
		return err == nil && s.State == api.StateExited
	})
	if s, _ := a.Sandbox(short); s.ExitCode == nil || *s.ExitCode != 3 {
		t.Fatalf("exit code %v, want 3", s.ExitCode)
	}
	a.Close()
	if !alive(sb.PID, 0) {
		t.Fatal("the command did not outlive the agent")
	}
	b := newKernelTestAgent(t, dir, newFake())
	defer func() {
		_ = b.RemoveSandbox(ctx, long)
		_ = b.RemoveSandbox(ctx, short)
		b.Close()
	}()
	if s, err := b.Sandbox(long); err != nil || s.State != api.StateRunning || s.PID != sb.PID {
		t.Fatalf("after restart: %+v %v, want running with pid %d", s, err, sb.PID)
	}
	_ = syscall.Kill(-sb.PID, syscall.SIGKILL)
	netnstest.Eventually(t, 10*time.Second, "the restarted agent to see the command exit", func() bool {
		s, err := b.Sandbox(long)
		return err == nil && s.State == api.StateExited
	})
}
