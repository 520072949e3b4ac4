package agent

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// exitWatcher follows processes through pidfds kept in one epoll set,
// which one goroutine waits on through the Go runtime's poller: a watched
// process costs a descriptor, not a goroutine or an OS thread (a blocking
// wait4 or poll would hold a thread each). A pidfd turns readable when
// its process exits; the agent's own children are then reaped with
// waitid(P_PIDFD, WNOHANG), which gives their exit code.
type exitWatcher struct {
	epfd   int
	ep     *os.File
	rc     syscall.RawConn
	done   chan struct{}
	wg     sync.WaitGroup // the loop and the exit reports
	exited func(name string, pid int, code *int)

	mu      sync.Mutex
	watched map[int32]watchedProc // pidfd → process
	events  []unix.EpollEvent
}

type watchedProc struct {
	name  string
	pid   int
	child bool // the agent's child: reap it and report its code
}

func newExitWatcher(exited func(name string, pid int, code *int)) (*exitWatcher, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("create pidfd epoll: %w", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("pidfd epoll nonblocking: %w", err)
	}
	w := &exitWatcher{
		epfd: epfd, ep: os.NewFile(uintptr(epfd), "pidfd-epoll"), done: make(chan struct{}),
		exited: exited, watched: make(map[int32]watchedProc), events: make([]unix.EpollEvent, 32),
	}
	if w.rc, err = w.ep.SyscallConn(); err != nil {
		w.ep.Close()
		return nil, fmt.Errorf("pidfd epoll: %w", err)
	}
	w.wg.Go(w.run)
	return w, nil
}

// add watches process pid until it exits; exited is then called from
// another goroutine. child says the process is the agent's own child.
// The caller guarantees pid names the process meant (an unreaped child, or
// a start time checked after the pidfd is opened: see watch).
func (w *exitWatcher) add(name string, pid, pidfd int, child bool) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(pidfd)}
	if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, pidfd, &ev); err != nil {
		return fmt.Errorf("watch pid %d: %w", pid, err)
	}
	w.watched[int32(pidfd)] = watchedProc{name: name, pid: pid, child: child}
	return nil
}

// count returns the number of processes watched.
func (w *exitWatcher) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.watched)
}

func (w *exitWatcher) run() {
	for {
		err := w.rc.Read(func(uintptr) bool { return w.drain() })
		select {
		case <-w.done:
			return
		default:
		}
		if err != nil {
			return
		}
	}
}

// drain handles every pidfd that is ready, until none is (the runtime
// watches the epoll descriptor edge-triggered). True stops the loop.
func (w *exitWatcher) drain() bool {
	for {
		select {
		case <-w.done:
			return true
		default:
		}
		n, err := unix.EpollWait(w.epfd, w.events, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n == 0 {
			return err != nil
		}
		for _, ev := range w.events[:n] {
			w.ready(int(ev.Fd))
		}
	}
}

// ready handles a readable pidfd: its process has exited.
func (w *exitWatcher) ready(fd int) {
	w.mu.Lock()
	p, ok := w.watched[int32(fd)]
	if !ok {
		w.mu.Unlock()
		return
	}
	var code *int
	if p.child {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PIDFD, fd, &info, unix.WEXITED|unix.WNOHANG, nil)
		if err == nil && siginfoPID(&info) == 0 {
			w.mu.Unlock()
			return // not exited after all
		}
		if err == nil {
			code = exitCode(&info)
		}
	}
	delete(w.watched, int32(fd))
	_ = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	unix.Close(fd)
	w.mu.Unlock()
	w.report(p.name, p.pid, code)
}

// report calls exited from a goroutine of its own (the caller may hold the
// agent's lock), unless the watcher is closed.
func (w *exitWatcher) report(name string, pid int, code *int) {
	w.wg.Go(func() {
		select {
		case <-w.done:
		default:
			w.exited(name, pid, code)
		}
	})
}

// close stops the loop, waits for the exit reports under way and closes
// the pidfds. Children still running are not reaped: the agent exits and
// they are re-adopted by PID and start time when it comes back.
func (w *exitWatcher) close() {
	close(w.done)
	w.ep.Close() // wakes the waiting Read
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	for fd := range w.watched {
		unix.Close(int(fd))
	}
	clear(w.watched)
}

// si_code values of SIGCHLD (not in x/sys/unix).
const (
	cldExited = 1
	cldKilled = 2
	cldDumped = 3
)

// Offsets in siginfo_t (64-bit Linux) of si_pid and si_status for SIGCHLD.
const (
	siginfoPIDOffset    = 16
	siginfoStatusOffset = 24
)

func siginfoPID(info *unix.Siginfo) int32 {
	return *(*int32)(unsafe.Add(unsafe.Pointer(info), siginfoPIDOffset))
}

// exitCode is a shell's $?: the exit status, or 128+signal for a process
// killed by a signal.
func exitCode(info *unix.Siginfo) *int {
	status := int(*(*int32)(unsafe.Add(unsafe.Pointer(info), siginfoStatusOffset)))
	switch info.Code {
	case cldExited:
		return &status
	case cldKilled, cldDumped:
		c := 128 + status
		return &c
	}
	return nil
}
