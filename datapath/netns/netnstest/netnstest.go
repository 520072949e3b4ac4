// Package netnstest is the helper package shared by the project's tests:
// bounded waits for a condition (Eventually, Until, Never, Poll), free
// ports, unique names, network namespaces of their own (uniquely named,
// removed with any process left inside killed when the test ends, even if
// it fails), and sockets inside them (Listen, Serve, ServePackets, Dial).
package netnstest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/fabricnet/fabric/datapath/netns"
)

// RequireRoot skips the test with a message unless it runs as root.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("skipping: needs root (network namespaces, links and nftables); run the suite as root")
	}
}

// UniqueName returns prefix plus random hex, short enough for link names.
func UniqueName(prefix string) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return prefix + hex.EncodeToString(b)
}

// New creates a uniquely named namespace and returns its name and path.
// The namespace, and every process still in it, is gone after the test.
func New(tb testing.TB, prefix string) (name, path string) {
	tb.Helper()
	RequireRoot(tb)
	name = UniqueName(prefix)
	path, err := netns.CreateNamed(name)
	if err != nil {
		tb.Fatalf("create netns %s: %v", name, err)
	}
	tb.Cleanup(func() { Remove(name) })
	return name, path
}

// Remove kills every process in the named namespace and deletes it.
func Remove(name string) {
	out, _ := exec.Command("ip", "netns", "pids", name).Output()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	_ = netns.DeleteNamed(name)
}

// Run runs a command inside the named namespace and returns its combined
// output; it fails the test on error.
func Run(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := Cmd(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("ip netns exec %s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Cmd returns an exec.Cmd that runs args inside the named namespace.
func Cmd(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", name}, args...)...)
}
