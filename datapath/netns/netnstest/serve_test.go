package netnstest

import (
	"io"
	"net"
	"testing"
	"time"
)

func TestAcceptEach(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		AcceptEach(ln, 2*time.Second, func(c net.Conn) { _, _ = io.WriteString(c, "hi "+c.RemoteAddr().String()) })
	}()
	for range 3 { // several connections, each answered and closed
		c, err := net.DialTimeout("tcp4", ln.Addr().String(), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		b, err := io.ReadAll(c) // returns at EOF: the server closed it
		c.Close()
		if err != nil || string(b) != "hi "+c.LocalAddr().String() {
			t.Fatalf("answer %q, %v", b, err)
		}
	}
	ln.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("AcceptEach did not return after the listener closed")
	}
}

// TestServeDialInNamespace: Listen, Serve, ListenPacket and Dial work
// inside the namespace they were given: the address they use exists only
// there.
func TestServeDialInNamespace(t *testing.T) {
	name, path := New(t, "fnt")
	Run(t, name, "ip", "link", "set", "lo", "up")
	Run(t, name, "ip", "addr", "add", "198.18.250.1/32", "dev", "lo")
	if ln, err := net.Listen("tcp4", "198.18.250.1:0"); err == nil {
		ln.Close()
		t.Skip("198.18.250.1 is an address of the test's own namespace")
	}
	ln := Serve(t, path, "tcp4", "198.18.250.1:0", 2*time.Second, func(c net.Conn) { _, _ = io.WriteString(c, "in ns") })
	c, err := Dial(path, "tcp4", ln.Addr().String(), 2*time.Second)
	if err != nil {
		t.Fatalf("dial in the namespace: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if b, err := io.ReadAll(c); err != nil || string(b) != "in ns" {
		t.Fatalf("answer %q, %v", b, err)
	}
	pc := ListenPacket(t, path, "udp4", "198.18.250.1:0")
	pc.Close()
}

// TestAcceptEachWaitsForHandlers: AcceptEach returns only after the
// handlers of the connections it accepted have returned.
func TestAcceptEachWaitsForHandlers(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started, release := make(chan struct{}), make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		AcceptEach(ln, 5*time.Second, func(net.Conn) { close(started); <-release })
	}()
	c, err := net.DialTimeout("tcp4", ln.Addr().String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("no handler ran")
	}
	ln.Close()
	select {
	case <-done:
		t.Fatal("AcceptEach returned while a handler still ran")
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("AcceptEach did not return after its handler did")
	}
}
