package plumb

import (
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"testing"

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

// TestEnsureHostSysctl: a host sysctl, looked up from the host's
// /proc/sys/net opened once, is set in the host namespace and not in the
// caller's, and names outside net/ work too.
func TestEnsureHostSysctl(t *testing.T) {
	_, path := netnstest.New(t, "plh")
	h, err := Open(slog.New(slog.NewTextHandler(io.Discard, nil)), path, Faults{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
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
	_, path := netnstest.New(t, "plc")
	h, err := Open(slog.New(slog.NewTextHandler(io.Discard, nil)), path, Faults{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
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
