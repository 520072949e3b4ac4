package netns

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// DoWithOwnProc is Do for code that reads or writes the namespace's
// /proc/sys/net: fn runs in the namespace at path with a procfs of its own
// on /proc (in a throwaway copy of the base mount namespace, see
// baseMountNS), which goes away with the thread.
//
// Each namespace that looks at /proc/sys/net leaves its own entry for the
// directory below net (ipv4, ipv6, core) in the one procfs everybody
// shares, under the same name and parent, and every later lookup of that
// name walks past all of them: setting a sysctl in a new sandbox cost
// about 0.1 ms at 10 sandboxes and 2.5 ms at 1,000. A fresh procfs holds
// only this namespace's entries. Where one cannot be mounted (a
// restricted /proc, no base mount namespace), fn runs as with Do.
func DoWithOwnProc(path string, fn func() error) error {
	target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer unix.Close(target)
	base, err := baseMountNS()
	if err != nil {
		return Do(path, fn)
	}
	var setupErr, fnErr error
	onThrowawayThread(func() {
		if setupErr = ownProc(int(base.Fd())); setupErr != nil {
			return
		}
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			fnErr = fmt.Errorf("enter netns %s: %w", path, err)
			return
		}
		fnErr = fn()
	})
	runtime.KeepAlive(base)
	if setupErr != nil {
		return Do(path, fn)
	}
	return fnErr
}

// ownProc gives the calling (throwaway) thread a copy of the base mount
// namespace with a new procfs on /proc. The copy's mounts are slaves of
// the host's, so nothing mounted here propagates out of it.
func ownProc(baseFD int) error {
	if err := copyBaseMounts(baseFD); err != nil {
		return err
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount proc: %w", err)
	}
	return nil
}
