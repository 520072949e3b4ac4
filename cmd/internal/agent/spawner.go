package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath/netns"
)

// Sandbox commands are started by a spawner: a copy of the agent's own
// executable, started with the agent, that holds four descriptors. A fork
// copies the forking process's whole descriptor table and the exec that
// follows closes it again; the agent holds about three descriptors per
// sandbox (resolver sockets, a pidfd), so a command started by the agent
// itself took longer the more sandboxes there were (0.2 ms with 10
// descriptors, 0.8 to 1.1 ms with 3,000). The spawner clones the command
// as a sibling (CLONE_PARENT): it is the agent's child, reaped and
// watched by the agent as before.

// spawnerEnv, set to "1", makes the executable a spawner (see init).
const spawnerEnv = "FABRIC_SANDBOX_SPAWNER"

// spawnTimeout bounds one request to the spawner.
const spawnTimeout = 30 * time.Second

func init() {
	if os.Getenv(spawnerEnv) == "1" {
		os.Exit(runSpawner(os.NewFile(3, "spawner-socket")))
	}
}

// spawnRequest asks for a command in a named network namespace, started as
// netns.StartIn does; the log file travels as the message's descriptor.
type spawnRequest struct {
	NetNS string   `json:"netns"`
	Argv  []string `json:"argv"`
	Env   []string `json:"env"`
}

type spawnReply struct {
	PID int    `json:"pid"`
	Err string `json:"err,omitempty"`
}

// spawner is the agent's end of a running spawner.
type spawner struct {
	mu      sync.Mutex
	sock    *os.File
	cmd     *exec.Cmd
	started int // commands started, for tests
}

// startSpawner starts a spawner; nil (and the reason) if it cannot run.
func startSpawner() (*spawner, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "spawner"), os.NewFile(uintptr(fds[1]), "spawner-socket")
	defer theirs.Close()
	// A spawner that stops answering must not hold the agent's lock for ever.
	tv := unix.NsecToTimeval(spawnTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fds[0], unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		mine.Close()
		return nil, fmt.Errorf("spawner socket timeout: %w", err)
	}
	// The running executable, even if the file was replaced since.
	cmd := exec.Command("/proc/self/exe")
	cmd.Env = []string{spawnerEnv + "=1", "PATH=" + os.Getenv("PATH")}
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Dir = "/"
	cmd.Stderr = os.Stderr // a crash report lands in the agent's log
	if err := cmd.Start(); err != nil {
		mine.Close()
		return nil, fmt.Errorf("start a copy of the agent: %w", err)
	}
	return &spawner{sock: mine, cmd: cmd}, nil
}

// start asks the spawner for argv in the named namespace with output to
// logf, and returns its PID.
func (s *spawner) start(nsName string, argv, env []string, logf *os.File) (int, error) {
	req, err := json.Marshal(spawnRequest{NetNS: nsName, Argv: argv, Env: env})
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sock == nil {
		return 0, errSpawnerGone
	}
	fd := int(s.sock.Fd())
	for {
		err = unix.Sendmsg(fd, req, unix.UnixRights(int(logf.Fd())), nil, unix.MSG_NOSIGNAL)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return 0, fmt.Errorf("%w: %w", errSpawnerGone, err)
	}
	buf := make([]byte, 4096)
	var n int
	for {
		// A receive timeout makes the call fail with EINTR on any signal
		// (the Go runtime's preemption signals among them).
		n, _, _, _, err = unix.Recvmsg(fd, buf, nil, 0)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err == nil && n == 0 {
		err = errors.New("closed")
	}
	if err != nil {
		// It may have started the command: no second try.
		return 0, fmt.Errorf("%w: no answer: %w", errSpawnerFailed, err)
	}
	var rep spawnReply
	if err := json.Unmarshal(buf[:n], &rep); err != nil {
		return 0, fmt.Errorf("spawner reply: %w", err)
	}
	if rep.Err != "" {
		return 0, errors.New(rep.Err)
	}
	s.started++
	return rep.PID, nil
}

// errSpawnerGone means the request did not reach the spawner: the caller
// starts the command itself. errSpawnerFailed means it did and got no
// answer: the spawner is given up, and this command fails.
var (
	errSpawnerGone   = errors.New("command spawner not running")
	errSpawnerFailed = errors.New("command spawner failed")
)

// close ends the spawner (it exits when its socket closes) and reaps it.
func (s *spawner) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sock == nil {
		return
	}
	s.sock.Close()
	s.sock = nil
	// It holds nothing: the commands it started are the agent's children.
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
}

// runSpawner serves requests on sock until the agent closes it.
func runSpawner(sock *os.File) int {
	// Deferred, the Close also keeps sock reachable: a finalized *os.File
	// would close the descriptor under the loop.
	defer sock.Close()
	fd := int(sock.Fd())
	unix.CloseOnExec(fd) // inherited without: the commands must not hold it
	buf := make([]byte, 64*1024)
	oob := make([]byte, unix.CmsgSpace(4))
	for {
		n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n == 0 {
			return 0 // the agent is gone
		}
		rep := spawnOne(buf[:n], oob[:oobn])
		out, _ := json.Marshal(rep)
		err = unix.Sendmsg(fd, out, nil, nil, unix.MSG_NOSIGNAL)
		for errors.Is(err, unix.EINTR) {
			err = unix.Sendmsg(fd, out, nil, nil, unix.MSG_NOSIGNAL)
		}
		if err != nil {
			return 0
		}
	}
}

func spawnOne(msg, oob []byte) spawnReply {
	logf, err := receivedFile(oob)
	if err != nil {
		return spawnReply{Err: err.Error()}
	}
	defer logf.Close()
	var req spawnRequest
	if err := json.Unmarshal(msg, &req); err != nil || len(req.Argv) == 0 {
		return spawnReply{Err: fmt.Sprintf("bad spawn request: %v", err)}
	}
	cmd := exec.Command(req.Argv[0], req.Argv[1:]...)
	cmd.Env, cmd.Dir = req.Env, "/"
	cmd.Stdout, cmd.Stderr = logf, logf
	// A sibling, not a child: the agent reaps and watches it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Cloneflags: unix.CLONE_PARENT}
	if err := netns.StartIn(req.NetNS, cmd); err != nil {
		return spawnReply{Err: err.Error()}
	}
	pid := cmd.Process.Pid
	_ = cmd.Process.Release()
	return spawnReply{PID: pid}
}

// receivedFile is the one descriptor of a message's control data.
func receivedFile(oob []byte) (*os.File, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil || len(msgs) != 1 {
		return nil, fmt.Errorf("spawn request without its log file (%v)", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("spawn request without its log file (%v)", err)
	}
	return os.NewFile(uintptr(fds[0]), "log"), nil
}
