package dns

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// loop serves the sockets of every attached sandbox from one goroutine:
// their descriptors are in one epoll set, and the epoll descriptor itself
// is waited on through the Go runtime's poller, so the loop holds no OS
// thread while idle and a sandbox costs no goroutine and no buffers, only
// two descriptors and an entry in a map. Local answers are made inline;
// forwards and TCP connections get goroutines of their own, bounded by
// MaxInflight and maxTCPConns.
type loop struct {
	s    *Server
	epfd int
	ep   *os.File // epfd, pollable by the runtime
	rc   syscall.RawConn
	done chan struct{}
	wg   sync.WaitGroup

	// mu is held while one socket is served; removing a socket takes it,
	// so once remove returns the loop never touches that socket again.
	mu    sync.Mutex
	socks map[uint32]*attachment // token → attachment
	next  uint32

	events []unix.EpollEvent
	batch  udpBatchBufs
}

// Token kinds, kept in the epoll event's second word.
const (
	kindUDP int32 = 1
	kindTCP int32 = 2
)

func newLoop(s *Server) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("create dns epoll: %w", err)
	}
	l := &loop{s: s, epfd: epfd, done: make(chan struct{}), socks: make(map[uint32]*attachment), events: make([]unix.EpollEvent, 64)}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("dns epoll nonblocking: %w", err)
	}
	l.ep = os.NewFile(uintptr(epfd), "dns-epoll")
	if l.rc, err = l.ep.SyscallConn(); err != nil {
		l.ep.Close()
		return nil, fmt.Errorf("dns epoll: %w", err)
	}
	l.batch.init()
	l.wg.Go(l.run)
	return l, nil
}

// run waits for the epoll set to be readable and serves what is ready,
// until close.
func (l *loop) run() {
	for {
		err := l.rc.Read(func(uintptr) bool { return l.drain() })
		select {
		case <-l.done:
			return
		default:
		}
		if err != nil {
			l.s.log.Error("dns: event loop stopped", "err", err)
			return
		}
	}
}

// drain serves ready sockets until none is ready (the runtime watches the
// epoll descriptor edge-triggered: returning with events pending would
// stall). A socket gets one batch per round, so a flooding sandbox cannot
// starve the others. It returns true only when the loop must stop.
func (l *loop) drain() bool {
	for {
		select {
		case <-l.done:
			return true
		default:
		}
		n, err := unix.EpollWait(l.epfd, l.events, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			l.s.log.Error("dns: epoll wait", "err", err)
			return true
		}
		if n == 0 {
			return false
		}
		for _, ev := range l.events[:n] {
			l.serve(uint32(ev.Fd), ev.Pad)
		}
	}
}

func (l *loop) serve(token uint32, kind int32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	a := l.socks[token]
	if a == nil {
		return // removed meanwhile
	}
	var err error
	switch kind {
	case kindUDP:
		err = l.serveUDP(a)
	case kindTCP:
		err = a.acceptTCP()
	}
	if err != nil {
		// The socket is broken: stop watching it, and the next Attach
		// replaces the resolver.
		l.removeLocked(a)
		a.ended(err)
	}
}

// add watches a's two sockets.
func (l *loop) add(a *attachment) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.next++
	for l.next == 0 || l.socks[l.next] != nil {
		l.next++
	}
	a.token = l.next
	for _, s := range []struct {
		fd   int
		kind int32
	}{{a.udpFD, kindUDP}, {a.tcpFD, kindTCP}} {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(a.token), Pad: s.kind}
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, s.fd, &ev); err != nil {
			_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, a.udpFD, nil)
			return fmt.Errorf("watch dns socket: %w", err)
		}
	}
	l.socks[a.token] = a
	return nil
}

// remove stops watching a's sockets; the loop is not serving them when
// it returns.
func (l *loop) remove(a *attachment) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.removeLocked(a)
}

func (l *loop) removeLocked(a *attachment) {
	if l.socks[a.token] != a {
		return
	}
	delete(l.socks, a.token)
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, a.udpFD, nil)
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, a.tcpFD, nil)
}

// close stops the loop and waits for it.
func (l *loop) close() {
	close(l.done)
	l.ep.Close() // wakes the waiting Read
	l.wg.Wait()
}
