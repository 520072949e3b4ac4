package lab_test

import (
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// A lab is cut off from the world, so a name that is no sandbox's cannot
// resolve; it must fail at once (the lab's upstream is its gateway, where
// nothing answers DNS, so the query is refused), not after the resolver's
// timeouts and retries. Sandbox names still resolve.
func TestLabOutsideNamesFailQuickly(t *testing.T) {
	l := newTestLab(t)
	l.up(1, "kernel")
	l.on(1, "run", "-d", "--name", "api", "--", "sleep", "300")
	l.on(1, "run", "-d", "--name", "web", "--", "sleep", "300")
	resolve := func(name string) (string, time.Duration, error) {
		start := time.Now()
		out, err := exec.Command("ip", "netns", "exec", l.netns(1)+"-web", "python3", "-c",
			"import socket,sys; print(socket.gethostbyname(sys.argv[1]))", name).CombinedOutput()
		return strings.TrimSpace(string(out)), time.Since(start), err
	}
	if out, _, err := resolve("api"); err != nil || net.ParseIP(out) == nil {
		t.Fatalf("sandbox name api: %v: %s", err, out)
	}
	out, took, err := resolve("fabric-test.example.com")
	if err == nil {
		t.Fatalf("an outside name resolved in an isolated lab: %s", out)
	}
	// The stub resolver waits 5 s for an unanswered query before its
	// retry: failing in less than that means the query was answered
	// (refused), whatever the machine's load.
	if took >= 4*time.Second {
		t.Errorf("an outside name took %v to fail: the query went unanswered into the resolver's timeout, want an answer that refuses it: %s", took.Round(time.Millisecond), out)
	}
	t.Logf("outside name failed after %v: %s", took.Round(time.Millisecond), out)
}
