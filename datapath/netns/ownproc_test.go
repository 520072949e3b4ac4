package netns_test

import (
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// TestDoWithOwnProc: fn sees a procfs other than the process's (so its
// /proc/sys lookups pass no other namespace's entries), a sysctl written
// there lands in the target namespace only, and the process's own mounts
// are the same afterwards.
func TestDoWithOwnProc(t *testing.T) {
	_, path := netnstest.New(t, "nop")
	const name = "/sys/net/ipv4/conf/lo/accept_local"
	read := func(do func(string, func() error) error) string {
		t.Helper()
		var out []byte
		if err := do(path, func() error {
			var err error
			out, err = os.ReadFile("/proc" + name)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	var outer unix.Stat_t
	if err := unix.Stat("/proc", &outer); err != nil {
		t.Fatal(err)
	}
	mounts := mountCounts(t)
	own, _ := os.ReadFile("/proc" + name)
	want := "1"
	if read(netns.Do) == "1" {
		want = "0"
	}
	err := netns.DoWithOwnProc(path, func() error {
		var st unix.Stat_t
		if err := unix.Stat("/proc", &st); err != nil {
			return err
		}
		if st.Dev == outer.Dev {
			t.Errorf("fn sees the process's procfs (device %d)", st.Dev)
		}
		return os.WriteFile("/proc"+name, []byte(want), 0o644)
	})
	if err != nil {
		t.Fatalf("DoWithOwnProc: %v", err)
	}
	if got := read(netns.Do); got != want {
		t.Errorf("%s in the namespace = %s, want %s", name, got, want)
	}
	if got, _ := os.ReadFile("/proc" + name); string(got) != string(own) {
		t.Errorf("the caller's %s changed from %q to %q", name, own, got)
	}
	// Other packages' tests add and remove namespace mounts under
	// /run/netns meanwhile; any other new mount is DoWithOwnProc's.
	for mp, n := range mountCounts(t) {
		if n > mounts[mp] && !strings.HasPrefix(mp, "/run/netns/") && !strings.HasPrefix(mp, "/var/run/netns/") {
			t.Errorf("the process has %d mounts on %s, %d before", n, mp, mounts[mp])
		}
	}
	if got := read(netns.DoWithOwnProc); got != want {
		t.Errorf("read back through its own procfs: %s, want %s", got, want)
	}
}

// mountCounts counts the process's mounts per mount point (one may stack
// on another).
func mountCounts(t *testing.T) map[string]int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 5 {
			out[f[4]]++
		}
	}
	return out
}
