package netnstest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// recorder is a testing.TB whose Fatalf only records, so the helpers'
// failures can be checked.
type recorder struct {
	testing.TB
	failed string
}

func (r *recorder) Helper()                           {}
func (r *recorder) Fatalf(format string, args ...any) { r.failed = fmt.Sprintf(format, args...) }

func TestWaits(t *testing.T) {
	n := 0
	if !Poll(time.Second, func() bool { n++; return n == 3 }) || n != 3 {
		t.Errorf("Poll: stopped after %d checks, want 3", n)
	}
	if t0 := time.Now(); Poll(100*time.Millisecond, func() bool { return false }) || time.Since(t0) > 2*time.Second {
		t.Errorf("Poll on a false condition: held, or took %v", time.Since(t0))
	}

	r := &recorder{TB: t}
	Eventually(r, 50*time.Millisecond, "never", func() bool { return false })
	if r.failed == "" {
		t.Error("Eventually did not fail on a condition that never held")
	}
	r = &recorder{TB: t}
	Never(r, 100*time.Millisecond, "it happened", func() bool { return true })
	if r.failed == "" {
		t.Error("Never did not fail on a condition that held")
	}
	r = &recorder{TB: t}
	Never(r, 50*time.Millisecond, "it happened", func() bool { return false })
	if r.failed != "" {
		t.Errorf("Never failed on a condition that never held: %s", r.failed)
	}
	r = &recorder{TB: t}
	Until(r, 300*time.Millisecond, "check", func() error { return fmt.Errorf("the last error") })
	if r.failed == "" || !strings.Contains(r.failed, "the last error") {
		t.Errorf("Until: failure %q, want one naming the last error", r.failed)
	}
}

func TestProcessRunning(t *testing.T) {
	if !ProcessRunning(os.Getpid()) {
		t.Fatal("this process is not running")
	}
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Skipf("skipping: cannot start true: %v", err)
	}
	pid := cmd.Process.Pid
	// Not yet waited for: a zombie once it exits, which counts as exited.
	Eventually(t, 5*time.Second, "an exited child to count as not running", func() bool { return !ProcessRunning(pid) })
	_ = cmd.Wait()
	if ProcessRunning(pid) {
		t.Error("a reaped process counts as running")
	}
}

func TestFreePort(t *testing.T) {
	if p := FreePort(t); p <= 0 || p > 65535 {
		t.Fatalf("FreePort = %d", p)
	}
}
