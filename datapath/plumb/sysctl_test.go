package plumb

import (
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	fabricns "github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// readSysctlIn reads /proc/sys/name in the namespace at path.
func readSysctlIn(t *testing.T, path, name string) string {
	t.Helper()
	var out []byte
	err := fabricns.Do(path, func() error {
		var err error
		out, err = os.ReadFile("/proc/sys/" + name)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// TestEnsureSysctl: a value is written once, through one open of the
// file; a missing sysctl is ErrNotExist and writes nothing.
func TestEnsureSysctl(t *testing.T) {
	_, path := netnstest.New(t, "pls")
	const name = "net/ipv6/conf/lo/disable_ipv6"
	if _, err := os.Stat("/proc/sys/" + name); err != nil {
		t.Skip("no IPv6 in this kernel")
	}
	for _, want := range []string{"1", "1", "0"} {
		err := fabricns.Do(path, func() error { return EnsureSysctl(name, want) })
		if err != nil {
			t.Fatalf("EnsureSysctl %s=%s: %v", name, want, err)
		}
		if got := readSysctlIn(t, path, name); got != want {
			t.Fatalf("%s = %s, want %s", name, got, want)
		}
	}
	err := fabricns.Do(path, func() error { return EnsureSysctl("net/ipv6/conf/nosuchlink/disable_ipv6", "1") })
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing sysctl: %v, want ErrNotExist", err)
	}
}

// openTestHost opens a Host on a new namespace named after prefix; both go
// when the test ends.
func openTestHost(t *testing.T, prefix string) (*Host, string) {
	t.Helper()
	_, path := netnstest.New(t, prefix)
	h, err := Open(slog.New(slog.NewTextHandler(io.Discard, nil)), path, Faults{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h, path
}

// TestEnsureHostSysctl: a host sysctl, looked up from the host's
// /proc/sys/net opened once, is set in the host namespace and not in the
// caller's, and names outside net/ work too.
func TestEnsureHostSysctl(t *testing.T) {
	h, path := openTestHost(t, "plh")
	if h.sysNet < 0 {
		t.Fatal("the host's /proc/sys/net was not opened")
	}
	const name = "net/ipv4/conf/lo/accept_local"
	own := readSysctlIn(t, "/proc/self/ns/net", name)
	want := "1"
	if own == "1" {
		want = "0"
	}
	if err := h.EnsureHostSysctl(name, want); err != nil {
		t.Fatal(err)
	}
	if got := readSysctlIn(t, path, name); got != want {
		t.Fatalf("host %s = %s, want %s", name, got, want)
	}
	if got := readSysctlIn(t, "/proc/self/ns/net", name); got != own {
		t.Fatalf("the caller's %s changed from %s to %s", name, own, got)
	}
	if err := h.EnsureHostSysctl("net/ipv4/conf/nosuchlink/accept_local", "1"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing host sysctl: %v, want ErrNotExist", err)
	}
}

// TestHostLinkSysctlLookup: a host link's sysctl is opened relative to the
// host's net/ipvN/conf, opened once: a lookup of ipv6 (or ipv4) under net
// passes that entry of every namespace that set a sysctl, so each endpoint
// create would cost more the more sandboxes exist.
func TestHostLinkSysctlLookup(t *testing.T) {
	h, path := openTestHost(t, "plc")
	var opened []string
	orig := openSysctlAt
	openSysctlAt = func(dirfd int, p string, flags int, mode uint32) (int, error) {
		opened = append(opened, p)
		return orig(dirfd, p, flags, mode)
	}
	defer func() { openSysctlAt = orig }()
	for _, name := range []string{"net/ipv4/conf/lo/accept_local", "net/ipv6/conf/lo/disable_ipv6"} {
		if _, err := os.Stat("/proc/sys/" + name); err != nil {
			continue // no IPv6 in this kernel
		}
		opened = nil
		if err := h.EnsureHostSysctl(name, readSysctlIn(t, path, name)); err != nil {
			t.Fatal(err)
		}
		if len(opened) != 1 || opened[0] != "lo/"+name[strings.LastIndex(name, "/")+1:] {
			t.Errorf("%s opened as %q, want one lookup below the host's conf directory", name, opened)
		}
	}
}

// TestSandboxIPv6OffOwnProc: IPv6 is turned off in the sandbox through a
// procfs of its own, not the process's shared one (where the lookup walks
// past an entry per sandbox namespace).
func TestSandboxIPv6OffOwnProc(t *testing.T) {
	_, path := netnstest.New(t, "plo")
	if _, err := os.Stat("/proc/sys/net/ipv6"); err != nil {
		t.Skip("no IPv6 in this kernel")
	}
	var outer, inner unix.Stat_t
	if err := unix.Stat("/proc", &outer); err != nil {
		t.Fatal(err)
	}
	orig := sandboxSysctls
	sandboxSysctls = func(p string, fn func() error) error {
		return orig(p, func() error {
			if err := unix.Stat("/proc", &inner); err != nil {
				return err
			}
			return fn()
		})
	}
	defer func() { sandboxSysctls = orig }()
	if err := sandboxIPv6Off(path, "lo"); err != nil {
		t.Fatal(err)
	}
	if inner.Dev == 0 || inner.Dev == outer.Dev {
		t.Errorf("sysctl set through procfs device %d, the process's is %d: want one of its own", inner.Dev, outer.Dev)
	}
	if got := readSysctlIn(t, path, "net/ipv6/conf/lo/disable_ipv6"); got != "1" {
		t.Errorf("disable_ipv6 on lo = %s, want 1", got)
	}
}
