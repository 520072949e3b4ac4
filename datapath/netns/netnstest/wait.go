package netnstest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"strconv"
	"testing"
	"time"
)

// The waits below replace fixed sleeps in tests: each polls the condition
// the test is really waiting for, bounded by a deadline, so a loaded
// machine makes a test slower rather than flaky, and an idle one fast.

// Poll calls cond every 20 ms until it holds or d has passed, and reports
// whether it held. It is for callers that handle the failure themselves.
func Poll(d time.Duration, cond func() bool) bool {
	return PollEvery(d, 20*time.Millisecond, cond)
}

// PollEvery is Poll with its own interval, for conditions that are costly
// to check (ones that start a process, say).
func PollEvery(d, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
}

// Eventually fails the test unless cond holds within d.
func Eventually(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	if !Poll(d, cond) {
		tb.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

// Until retries check every 200 ms (checks that start a command are not
// cheap) until it returns nil, and returns how long that took; it fails
// the test with the last error if d passes first.
func Until(tb testing.TB, d time.Duration, what string, check func() error) time.Duration {
	tb.Helper()
	t0 := time.Now()
	var err error
	if PollEvery(d, 200*time.Millisecond, func() bool { err = check(); return err == nil }) {
		return time.Since(t0)
	}
	tb.Fatalf("%s: still failing after %v: %v", what, d, err)
	return 0
}

// Never fails the test if cond holds at any point during d: the window in
// which something must not happen (a partition must not leak, a refused
// node must not get in). It always takes d.
func Never(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			tb.Fatalf("within %v: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if cond() {
		tb.Fatalf("within %v: %s", d, what)
	}
}

// FreePort returns a loopback port that was free for both TCP and UDP
// (gossip listens on both) a moment ago.
func FreePort(tb testing.TB) int {
	tb.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("listen on a free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port))
		_ = l.Close()
		if err == nil {
			_ = u.Close()
			return port
		}
	}
	tb.Fatal("no port free for both TCP and UDP after 20 tries")
	return 0
}

// ProcessRunning reports whether pid exists and is not a zombie (an
// orphaned process is reaped whenever init gets to it, so a zombie has
// exited as far as a test is concerned).
func ProcessRunning(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || len(b) < i+3 || b[i+2] != 'Z'
}
