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
