package agent

import (
	"errors"
	"fmt"
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
	"golang.org/x/sys/unix"
)

// processes runs sandbox commands and watches them. Commands run in their
// own session so they outlive the agent: a restarted agent re-adopts them by
// PID (checked against the process start time). Every command, started or
// adopted, is watched through a pidfd in one exitWatcher: no goroutine or
// OS thread per command.
type processes struct {
	a      *Agent
	logDir string
	w      *exitWatcher
	once   sync.Once
	// sp starts the commands of named sandboxes (nil: the agent does).
	spMu sync.Mutex
	sp   *spawner
}

func newProcesses(a *Agent, logDir string) (*processes, error) {
	p := &processes{a: a, logDir: logDir}
	w, err := newExitWatcher(func(name string, pid int, code *int) { a.processExited(name, pid, code) })
	if err != nil {
		return nil, fmt.Errorf("command supervision: %w", err)
	}
	p.w = w
	if p.sp, err = startSpawner(); err != nil {
		a.log.Warn("no command spawner: the agent starts sandbox commands itself", "err", err)
	}
	return p, nil
}

func (p *processes) close() {
	p.once.Do(func() {
		p.w.close()
		if sp := p.spawner(); sp != nil {
			sp.close()
		}
	})
}

func (p *processes) spawner() *spawner {
	p.spMu.Lock()
	defer p.spMu.Unlock()
	return p.sp
}

// launch says where a command starts: in the named namespace netns as
// netns.StartIn does (by the spawner while it runs), or through in.
type launch struct {
	netns string
	in    func(*exec.Cmd) error
}

// startCommand starts argv as l says, with output to logf, and returns
// its PID; the process is the agent's child either way.
func (p *processes) startCommand(name string, argv []string, l launch, logf *os.File) (int, error) {
	if sp := p.spawner(); sp != nil && l.netns != "" {
		pid, err := sp.start(l.netns, argv, commandEnv(name), logf)
		if !errors.Is(err, errSpawnerGone) && !errors.Is(err, errSpawnerFailed) {
			return pid, err
		}
		p.a.log.Warn("command spawner gone: the agent starts sandbox commands itself", "err", err)
		p.spMu.Lock()
		p.sp = nil
		p.spMu.Unlock()
		sp.close()
		if errors.Is(err, errSpawnerFailed) {
			return 0, err
		}
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = commandEnv(name)
	cmd.Dir = "/"
	// An *os.File as output is handed to the child as is: no copying
	// goroutine.
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	start := l.in
	if start == nil {
		start = func(cmd *exec.Cmd) error { return netns.StartIn(l.netns, cmd) }
	}
	if err := start(cmd); err != nil {
		return 0, err
	}
	pid := cmd.Process.Pid
	// cmd.Wait would block a thread: the watcher reaps instead.
	_ = cmd.Process.Release()
	return pid, nil
}

// commandEnv is the environment of sandbox commands: clean, like a
// container's, not the agent's.
func commandEnv(name string) []string {
	return []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root",
		"FABRIC_SANDBOX=" + name,
	}
}

// start runs argv where l says (the sandbox's namespaces) with output to a
// log file and returns once the process runs.
func (p *processes) start(name string, argv []string, l launch) (pid int, startTime uint64, logPath string, err error) {
	if err := os.MkdirAll(p.logDir, 0o700); err != nil {
		return 0, 0, "", fmt.Errorf("create log dir: %w", err)
	}
	logPath = filepath.Join(p.logDir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, 0, "", fmt.Errorf("open log: %w", err)
	}
	defer logf.Close()
	if pid, err = p.startCommand(name, argv, l, logf); err != nil {
		return 0, 0, "", err
	}
	// The child is not reaped until the watcher does it, so pid names it
	// here whatever it did meanwhile.
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err == nil {
		err = p.w.add(name, pid, fd, true)
		if err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		_ = unix.Kill(-pid, unix.SIGKILL)
		var ws unix.WaitStatus
		_, _ = unix.Wait4(pid, &ws, 0, nil)
		return 0, 0, "", fmt.Errorf("watch command: %w", err)
	}
	startTime, err = processStart(pid)
	if err != nil {
		startTime = 0 // exited already; the watcher reports it
	}
	return pid, startTime, logPath, nil
}

// watch follows a process that is not the agent's child (a foreground
// `run`, or a command started by an earlier agent) until it exits.
func (p *processes) watch(name string, pid int, startTime uint64) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	// The start time is checked after the pidfd is open, so the pidfd is
	// the process meant and not one that reused its PID.
	if err == nil && alive(pid, startTime) {
		if err = p.w.add(name, pid, fd, false); err == nil {
			return
		}
		p.a.log.Warn("watch sandbox command", "sandbox", name, "pid", pid, "err", err)
	}
	if fd > 0 {
		unix.Close(fd)
	}
	p.w.report(name, pid, nil)
}

// stop ends a process: SIGTERM, then SIGKILL after grace. With group (a
// command the agent started, the leader of its own session) its whole
// process group is signalled. Without, the process is signalled alone and
// only if it is in the namespace at nsPath ("" = the agent's own): a PID
// that left it is not the sandbox's business any more. The signals go
// through a pidfd opened before the start time is checked, so a PID reused
// meanwhile is never hit.
func (p *processes) stop(pid int, startTime uint64, grace time.Duration, group bool, nsPath string) error {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil // gone
	}
	pf := os.NewFile(uintptr(fd), "pidfd") // owns fd
	defer pf.Close()
	rc, err := pf.SyscallConn()
	if err != nil {
		return fmt.Errorf("stop process %d: %w", pid, err)
	}
	if !alive(pid, startTime) {
		return nil
	}
	if !group {
		if in, err := inNamespace(pid, nsPath); err != nil || !in {
			if p.a != nil {
				p.a.log.Warn("not signalling a process that left the sandbox's namespace", "pid", pid, "err", err)
			}
			return nil
		}
	}
	signal := func(sig unix.Signal) {
		if group {
			if pgid, err := unix.Getpgid(pid); err == nil && pgid == pid {
				_ = unix.Kill(-pid, sig) // the session the agent started; its leader is alive
			}
		}
		_ = rc.Control(func(fd uintptr) { _ = unix.PidfdSendSignal(int(fd), sig, nil, 0) })
	}
	signal(unix.SIGTERM)
	if waitExit(pf, rc, grace) {
		return nil
	}
	signal(unix.SIGKILL)
	if waitExit(pf, rc, 3*time.Second) {
		return nil
	}
	return fmt.Errorf("process %d did not exit after SIGKILL", pid)
}

// waitExit waits up to limit for the process of the pidfd in pf to exit:
// the pidfd turns readable then. The wait is parked on the runtime's
// poller (no thread held, no polling interval), and ends the moment the
// process does.
func waitExit(pf *os.File, rc syscall.RawConn, limit time.Duration) bool {
	if err := pf.SetReadDeadline(time.Now().Add(limit)); err != nil {
		return false
	}
	exited := false
	_ = rc.Read(func(fd uintptr) bool {
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
		exited = err == nil && n > 0
		return exited
	})
	return exited
}

// inNamespace reports whether process pid is in the network namespace at
// nsPath ("" = the agent's own).
func inNamespace(pid int, nsPath string) (bool, error) {
	if nsPath == "" {
		nsPath = "/proc/self/ns/net"
	}
	want, err := netns.IDOf(nsPath)
	if err != nil {
		return false, err
	}
	got, err := processNetNS(pid)
	if err != nil {
		return false, fmt.Errorf("process %d: %w", pid, err)
	}
	return got == want, nil
}

// processNetNS is the network namespace process pid is in.
func processNetNS(pid int) (netns.ID, error) {
	return netns.IDOf(fmt.Sprintf("/proc/%d/ns/net", pid))
}

// waitInNamespace waits up to limit for process pid (started at
// startTime) to be in the namespace at nsPath.
func waitInNamespace(pid int, startTime uint64, nsPath string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		in, err := inNamespace(pid, nsPath)
		if err != nil {
			return err
		}
		if !alive(pid, startTime) {
			return fmt.Errorf("process %d has exited", pid)
		}
		if in {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("process %d is not in the sandbox's network namespace", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (p *processes) removeLog(path string) {
	if path != "" && strings.HasPrefix(path, p.logDir) {
		_ = os.Remove(path)
	}
}

// alive reports whether pid runs and is the same process as before (same
// start time); zombies count as gone.
func alive(pid int, startTime uint64) bool {
	st, state, err := procStat(pid)
	if err != nil || state == "Z" || state == "X" {
		return false
	}
	return startTime == 0 || st == startTime
}

// processStart returns a process's start time in clock ticks since boot.
func processStart(pid int) (uint64, error) {
	st, state, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	if state == "Z" {
		return 0, fmt.Errorf("process %d has exited", pid)
	}
	return st, nil
}

func procStat(pid int) (start uint64, state string, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, "", fmt.Errorf("no process %d", pid)
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, "", fmt.Errorf("parse /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[i+1:])
	// fields[0] is field 3 (state); starttime is field 22.
	if len(fields) < 20 {
		return 0, "", fmt.Errorf("parse /proc/%d/stat", pid)
	}
	start, err = strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0, "", fmt.Errorf("parse /proc/%d/stat starttime: %w", pid, err)
	}
	return start, fields[0], nil
}

// killUnrecorded kills every process in the namespace of sb, one the
// agent made, if sb has a command and no recorded PID, and returns how
// many. That is a sandbox whose create was cut short (the agent was
// killed) after its command may have started and before its PID was
// recorded: nothing else would ever stop that command, and it would keep
// the namespace, and the endpoints' pairs in it, alive. The walk over
// /proc runs only then. A namespace that does not exist has none.
func killUnrecorded(sb *sandboxRec) (int, error) {
	if sb.PID != 0 || len(sb.Command) == 0 || sb.Mode != api.ModeNetNS {
		return 0, nil
	}
	want, err := netns.IDOf(sb.NetNS)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, fmt.Errorf("list processes: %w", err)
	}
	killed := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if id, err := processNetNS(pid); err != nil || id != want {
			continue
		}
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue // gone
		}
		// Checked again once the pidfd holds the process: the PID may
		// have been reused between the first look and the open.
		if id, err := processNetNS(pid); err == nil && id == want {
			if unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0) == nil {
				killed++
			}
		}
		_ = unix.Close(fd)
	}
	return killed, nil
}
