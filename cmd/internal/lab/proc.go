package lab

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/fabricnet/fabric/datapath/netns"
)

// The lab finds its processes through /proc rather than trusting recorded
// PIDs alone: a PID may have been reused, and a crash between starting an
// agent and recording its PID leaves the agent unrecorded.

// procDir is /proc; tests point it at fake trees.
var procDir = "/proc"

// pids lists every process ID in procDir.
func pids() []int {
	entries, err := os.ReadDir(procDir)
	if err != nil {
		return nil
	}
	out := make([]int, 0, len(entries))
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 {
			out = append(out, pid)
		}
	}
	return out
}

// cmdline returns a process's argv; nil for a zombie or a gone process.
func cmdline(pid int) []string {
	data, err := os.ReadFile(filepath.Join(procDir, strconv.Itoa(pid), "cmdline"))
	if err != nil || len(data) == 0 {
		return nil
	}
	data = bytes.TrimSuffix(data, []byte{0})
	var argv []string
	for a := range bytes.SplitSeq(data, []byte{0}) {
		argv = append(argv, string(a))
	}
	return argv
}

// isAgentArgv reports whether argv is the fabricd serving socket: its
// program is named like fabricd (the lab's binary, or any "fabricd") and
// it has --socket SOCKET or --socket=SOCKET.
func isAgentArgv(argv []string, fabricd, socket string) bool {
	if len(argv) == 0 {
		return false
	}
	prog := filepath.Base(argv[0])
	if prog != "fabricd" && (fabricd == "" || prog != filepath.Base(fabricd)) {
		return false
	}
	for i, a := range argv[1:] {
		if a == "--socket="+socket || a == "--socket" && i+2 < len(argv) && argv[i+2] == socket {
			return true
		}
	}
	return false
}

// agentPIDs returns the live processes that are the node's agent: the
// recorded PID if it still is, and any other fabricd serving its socket.
func agentPIDs(fabricd string, n Node) []int {
	var out []int
	for _, pid := range pids() {
		if isAgentArgv(cmdline(pid), fabricd, n.Socket) {
			out = append(out, pid)
		}
	}
	return out
}

// agentAlive reports whether the node's recorded agent PID is still its
// running agent.
func agentAlive(fabricd string, n Node) bool {
	return n.PID > 0 && isAgentArgv(cmdline(n.PID), fabricd, n.Socket)
}

// processesIn lists the processes whose network namespace is the one
// bind-mounted at nsPath.
func processesIn(nsPath string) []int {
	want, err := netns.IDOf(nsPath)
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var out []int
	for _, pid := range pids() {
		if pid == self {
			continue
		}
		id, err := netns.IDOf(filepath.Join(procDir, strconv.Itoa(pid), "ns", "net"))
		if err == nil && id == want {
			out = append(out, pid)
		}
	}
	return out
}

// stopProcesses sends SIGTERM to every pid, waits up to grace for them to
// go, then SIGKILLs the rest and waits up to another second. It reports
// the ones still there after that.
func stopProcesses(pids []int, grace time.Duration) error {
	signalAll(pids, syscall.SIGTERM)
	left := waitGone(pids, grace)
	if len(left) == 0 {
		return nil
	}
	signalAll(left, syscall.SIGKILL)
	if left = waitGone(left, time.Second); len(left) > 0 {
		return fmt.Errorf("processes %v still run after SIGKILL", left)
	}
	return nil
}

// killProcesses SIGKILLs every pid and waits up to a second for them.
func killProcesses(pids []int) error {
	signalAll(pids, syscall.SIGKILL)
	if left := waitGone(pids, time.Second); len(left) > 0 {
		return fmt.Errorf("processes %v still run after SIGKILL", left)
	}
	return nil
}

func signalAll(pids []int, sig syscall.Signal) {
	for _, pid := range pids {
		// An error means the process is already gone (ESRCH); waitGone
		// tells the caller about any that stay.
		_ = syscall.Kill(pid, sig)
	}
}

// waitGone polls until every pid has exited (or is a zombie, which holds
// no namespace or socket any more) or wait has passed, and returns the
// ones left.
func waitGone(pids []int, wait time.Duration) []int {
	deadline := time.Now().Add(wait)
	for {
		var left []int
		for _, pid := range pids {
			if running(pid) {
				left = append(left, pid)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// running reports whether pid exists and is not a zombie.
func running(pid int) bool {
	data, err := os.ReadFile(filepath.Join(procDir, strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may
	// itself contain ") ".
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 >= len(data) {
		return false
	}
	return data[i+2] != 'Z' && data[i+2] != 'X'
}
