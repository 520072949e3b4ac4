package dns

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// TCP limits: the connections one sandbox may hold open, how long the
// first query and the next ones may take to arrive, how long a reply may
// take to be taken.
const (
	maxTCPConns    = 64
	tcpReadTimeout = 2 * time.Second
	tcpIdleTimeout = 8 * time.Second
	tcpWriteLimit  = 2 * time.Second
	tcpAcceptBurst = 16 // connections accepted per round of the loop
)

// listenFDs opens the non-blocking UDP and TCP sockets of a resolver on
// addr in the current namespace; port 0 gets the UDP socket's port for
// TCP too. It returns the bound address.
func listenFDs(addr netip.AddrPort) (udpFD, tcpFD int, bound netip.AddrPort, err error) {
	if !addr.Addr().Is4() {
		return -1, -1, bound, fmt.Errorf("listen %s: not an IPv4 address", addr)
	}
	const flags = unix.SOCK_NONBLOCK | unix.SOCK_CLOEXEC
	udpFD, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|flags, 0)
	if err != nil {
		return -1, -1, bound, fmt.Errorf("udp socket: %w", err)
	}
	sa := &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}
	if err := unix.Bind(udpFD, sa); err != nil {
		unix.Close(udpFD)
		return -1, -1, bound, fmt.Errorf("listen udp %s: %w", addr, err)
	}
	if got, err := unix.Getsockname(udpFD); err == nil {
		if in4, ok := got.(*unix.SockaddrInet4); ok {
			sa.Port = in4.Port
		}
	}
	bound = netip.AddrPortFrom(addr.Addr(), uint16(sa.Port))
	tcpFD, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|flags, 0)
	if err == nil {
		// As Go's net.Listen: a restarted resolver binds despite
		// connections of the last one in TIME_WAIT.
		err = unix.SetsockoptInt(tcpFD, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		if err == nil {
			err = unix.Bind(tcpFD, sa)
		}
		if err == nil {
			err = unix.Listen(tcpFD, 128)
		}
		if err != nil {
			unix.Close(tcpFD)
		}
	}
	if err != nil {
		unix.Close(udpFD)
		return -1, -1, bound, fmt.Errorf("listen tcp %s: %w", bound, err)
	}
	return udpFD, tcpFD, bound, nil
}

// acceptTCP takes the waiting connections of a's listener; each gets a
// goroutine until it is idle or the sandbox is detached. Connections over
// maxTCPConns are closed at once: the client retries or gives up.
func (a *attachment) acceptTCP() error {
	for range tcpAcceptBurst {
		fd, _, err := unix.Accept4(a.tcpFD, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return nil
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED), errors.Is(err, unix.EMFILE),
			errors.Is(err, unix.ENFILE), errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.ENOMEM):
			return nil // transient: the loop comes back while connections wait
		case err != nil:
			return fmt.Errorf("accept: %w", err)
		}
		f := os.NewFile(uintptr(fd), "dns-tcp")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			continue
		}
		a.connMu.Lock()
		if a.conns == nil {
			a.conns = make(map[net.Conn]struct{})
		}
		if len(a.conns) >= maxTCPConns || a.ctx.Err() != nil {
			a.connMu.Unlock()
			c.Close()
			continue
		}
		a.conns[c] = struct{}{}
		a.connMu.Unlock()
		a.wg.Go(func() { a.serveTCPConn(c) })
	}
	return nil
}

// serveTCPConn answers the length-prefixed queries of one connection in
// turn, as the miekg/dns server does: the first within tcpReadTimeout, the
// next ones within tcpIdleTimeout.
func (a *attachment) serveTCPConn(c net.Conn) {
	defer func() {
		c.Close()
		a.connMu.Lock()
		delete(a.conns, c)
		a.connMu.Unlock()
	}()
	w := &tcpWriter{conn: c}
	wait := tcpReadTimeout
	var lenBuf [2]byte
	for a.ctx.Err() == nil {
		_ = c.SetReadDeadline(time.Now().Add(wait))
		if _, err := io.ReadFull(c, lenBuf[:]); err != nil {
			return
		}
		_ = c.SetReadDeadline(time.Now().Add(tcpReadTimeout))
		msg := make([]byte, binary.BigEndian.Uint16(lenBuf[:]))
		if _, err := io.ReadFull(c, msg); err != nil {
			return
		}
		a.s.handlePacket(a, msg, w)
		if w.broken {
			return
		}
		wait = tcpIdleTimeout
	}
}

// closeConns ends every TCP connection of a (Detach).
func (a *attachment) closeConns() {
	a.connMu.Lock()
	defer a.connMu.Unlock()
	for c := range a.conns {
		_ = c.SetDeadline(time.Unix(1, 0))
	}
}

// tcpWriter writes length-prefixed replies with a deadline, so a client
// that stops reading cannot pin the goroutine.
type tcpWriter struct {
	noTSIG
	conn   net.Conn
	broken bool
}

func (w *tcpWriter) Write(b []byte) (int, error) {
	if len(b) > 0xFFFF {
		return 0, fmt.Errorf("dns reply of %d bytes over tcp", len(b))
	}
	if err := w.conn.SetWriteDeadline(time.Now().Add(tcpWriteLimit)); err != nil {
		w.broken = true
		return 0, err
	}
	buf := make([]byte, 2+len(b))
	binary.BigEndian.PutUint16(buf, uint16(len(b)))
	copy(buf[2:], b)
	if _, err := w.conn.Write(buf); err != nil {
		w.broken = true
		return 0, err
	}
	return len(b), nil
}

func (w *tcpWriter) WriteMsg(m *dns.Msg) error { return writeMsg(w, m) }

func (w *tcpWriter) viaTCP() bool         { return true }
func (w *tcpWriter) LocalAddr() net.Addr  { return w.conn.LocalAddr() }
func (w *tcpWriter) RemoteAddr() net.Addr { return w.conn.RemoteAddr() }
func (w *tcpWriter) Close() error         { return w.conn.Close() }
