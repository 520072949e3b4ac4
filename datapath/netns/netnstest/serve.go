package netnstest

import (
	"net"
	"time"
)

// AcceptEach serves every connection ln accepts with handle, each in a
// goroutine of its own with a deadline d from its start, and closes it
// afterwards; it returns once ln is closed.
func AcceptEach(ln net.Listener, d time.Duration, handle func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(d))
			handle(c)
		}()
	}
}
