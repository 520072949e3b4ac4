// Package netns creates, enters and removes network namespaces the way
// `ip netns` does, so that a sandbox made by fabric works with
// `ip netns exec NAME …` and a namespace made by `ip netns add` works with
// fabric.
//
// Entering a namespace always happens on a dedicated, locked OS thread; if
// the thread cannot be switched back it is left locked so the Go runtime
// destroys it instead of reusing a thread in the wrong namespace.
package netns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RunDir is where named namespaces are bind-mounted (iproute2's NETNS_RUN_DIR).
const RunDir = "/var/run/netns"

// Path returns the bind-mount path of the named namespace.
func Path(name string) string { return filepath.Join(RunDir, name) }

// ValidName reports whether name can be used for a named namespace: the
// rules of iproute2 plus a length limit that keeps paths readable.
func ValidName(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("name %q must be 1 to 64 characters", name)
	}
	if name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("name %q must not be '.', '..' or contain '/'", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("name %q may contain only letters, digits, '-', '_' and '.'", name)
		}
	}
	return nil
}

// runDirDone is set once this process has made RunDir a shared mount
// point.
var runDirDone atomic.Bool

// ensureRunDir makes RunDir a shared mount point, as iproute2 does, so that
// namespaces bind-mounted there are visible in every mount namespace.
//
// It is done once per process while RunDir stays a mount point: making it
// shared is recursive (MS_REC, as iproute2 does), a walk over every
// namespace mounted there, which would make each create cost more the more
// sandboxes exist.
func ensureRunDir() error {
	if runDirDone.Load() && isMountRoot(RunDir) {
		return nil
	}
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", RunDir, err)
	}
	err := unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) {
		if err := unix.Mount(RunDir, RunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mount %s: %w", RunDir, err)
		}
		err = unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s shared: %w", RunDir, err)
	}
	runDirDone.Store(true)
	return nil
}

// isMountRoot reports whether path is the root of a mount (a mount point).
func isMountRoot(path string) bool {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_BASIC_STATS, &st); err != nil {
		return false
	}
	return st.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && st.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0
}

// IsNamespace reports whether path refers to a network namespace (an nsfs
// bind mount or a /proc/PID/ns/net link).
func IsNamespace(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == unix.NSFS_MAGIC
}

// ID identifies a namespace by device and inode, stable for its lifetime.
type ID struct {
	Dev uint64 `json:"dev"`
	Ino uint64 `json:"ino"`
}

// IDOf returns the identity of the namespace at path.
func IDOf(path string) (ID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return ID{}, fmt.Errorf("stat netns %s: %w", path, err)
	}
	return ID{Dev: st.Dev, Ino: st.Ino}, nil
}

// CreateNamed creates the named namespace with lo up and returns its path.
// If it already exists it is kept (ensure semantics).
func CreateNamed(name string) (string, error) {
	if err := ValidName(name); err != nil {
		return "", err
	}
	p := Path(name)
	if IsNamespace(p) {
		return p, setLoUp(p)
	}
	if err := ensureRunDir(); err != nil {
		return "", err
	}
	f, err := os.OpenFile(p, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("create %s: %w", p, err)
	}
	if f != nil {
		f.Close()
	}
	err = InNew(func() error {
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(src, p, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mount netns to %s: %w", p, err)
		}
		return nil
	})
	if err != nil {
		os.Remove(p)
		return "", err
	}
	return p, setLoUp(p)
}

// InNew runs fn on a locked OS thread in a new network namespace of its
// own (gone when nothing holds it any more, unless fn bind-mounts it),
// then brings the thread back to its original namespace. A thread that
// cannot go back stays locked, so the runtime destroys it with its
// goroutine instead of reusing it.
func InNew(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare netns: %w", err)
			return
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(fnErr, fmt.Errorf("return to original netns: %w", err))
			return // the thread stays locked and dies with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- fnErr
	}()
	return <-errc
}

func setLoUp(path string) error {
	h, err := HandleAt(path)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo in %s: %w", path, err)
	}
	if lo.Attrs().Flags&unix.IFF_UP != 0 {
		return nil
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up in %s: %w", path, err)
	}
	return nil
}

// DeleteNamed unmounts and removes the named namespace. A missing one is
// not an error. Processes still inside keep the namespace alive.
func DeleteNamed(name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	p := Path(name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", p, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", p, err)
	}
	return nil
}

// HandleAt returns a netlink handle operating inside the namespace at path.
func HandleAt(path string) (*netlink.Handle, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", path, err)
	}
	return h, nil
}

// Do runs fn on a locked OS thread switched into the namespace at path.
// Goroutines started by fn do not inherit the namespace.
func Do(path string, fn func() error) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			return
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(fnErr, fmt.Errorf("return to original netns: %w", err))
			return // leave the thread locked: the runtime destroys it
		}
		runtime.UnlockOSThread()
		errc <- fnErr
	}()
	return <-errc
}

// EtcDir is where `ip netns exec` finds per-namespace files that replace
// those of /etc (resolv.conf, hosts) in a private mount namespace.
const EtcDir = "/etc/netns"

// ExecArgv returns how to run argv inside the named namespace so that its
// EtcDir files apply: through `ip netns exec NAME` when the namespace has
// them and ip is installed (ok is true), else argv unchanged (ok is false;
// the caller then starts it inside the namespace itself).
func ExecArgv(name string, argv []string) (out []string, ok bool) {
	if _, err := os.Stat(filepath.Join(EtcDir, name)); err != nil {
		return argv, false
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		return argv, false
	}
	return append([]string{ip, "netns", "exec", name}, argv...), true
}
