package netnstest

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns"
)

// AcceptEach serves every connection ln accepts with handle, each in a
// goroutine of its own with a deadline d from its start, and closes it
// afterwards; it returns once ln is closed and every handler has returned.
func AcceptEach(ln net.Listener, d time.Duration, handle func(net.Conn)) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Go(func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(d))
			handle(c)
		})
	}
}

// Listen listens on addr (network "tcp4", "tcp", ...) inside the
// namespace at nsPath, where the socket stays; it fails tb if it cannot.
// The caller closes the listener.
func Listen(tb testing.TB, nsPath, network, addr string) net.Listener {
	tb.Helper()
	return openIn(tb, nsPath, network, addr, net.Listen)
}

// ListenPacket is Listen for datagrams ("udp4", "udp").
func ListenPacket(tb testing.TB, nsPath, network, addr string) net.PacketConn {
	tb.Helper()
	return openIn(tb, nsPath, network, addr, net.ListenPacket)
}

// openIn opens a socket with open inside the namespace at nsPath.
func openIn[S any](tb testing.TB, nsPath, network, addr string, open func(network, addr string) (S, error)) S {
	tb.Helper()
	var s S
	err := netns.Do(nsPath, func() (err error) {
		s, err = open(network, addr)
		return err
	})
	if err != nil {
		tb.Fatalf("listen %s %s in %s: %v", network, addr, nsPath, err)
	}
	return s
}

// Serve listens on addr inside the namespace at nsPath and serves every
// connection with handle as AcceptEach does, until the test ends: then
// the listener is closed and the handlers are waited for. It returns the
// listener, for its address.
func Serve(tb testing.TB, nsPath, network, addr string, d time.Duration, handle func(net.Conn)) net.Listener {
	tb.Helper()
	ln := Listen(tb, nsPath, network, addr)
	done := make(chan struct{})
	go func() {
		defer close(done)
		AcceptEach(ln, d, handle)
	}()
	tb.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln
}

// Dial connects to addr from inside the namespace at nsPath, giving up
// after timeout. The connection stays in that namespace.
func Dial(nsPath, network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := netns.Do(nsPath, func() (err error) {
		c, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	return c, err
}

// ServePackets listens for datagrams on addr inside the namespace at
// nsPath and hands each to handle (the payload is valid only during the
// call), until the test ends: then the socket is closed and the reader
// waited for. It returns the socket, for its address and for answers.
func ServePackets(tb testing.TB, nsPath, network, addr string, handle func(pc net.PacketConn, payload []byte, from net.Addr)) net.PacketConn {
	tb.Helper()
	pc := ListenPacket(tb, nsPath, network, addr)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			handle(pc, buf[:n], from)
		}
	}()
	tb.Cleanup(func() {
		pc.Close()
		<-done
	})
	return pc
}
