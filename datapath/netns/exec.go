package netns

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// StartIn starts cmd in the named namespace the way `ip netns exec NAME`
// runs a command: in a mount namespace of its own, with a sysfs of the
// network namespace on /sys and every file of EtcDir/NAME bind-mounted over
// the file of the same name in /etc (resolv.conf, hosts).
//
// Unlike `ip netns exec`, the command's mount namespace holds no copy of
// any namespace bind mount (those under RunDir, and those other programs
// keep elsewhere). `ip netns exec` copies the whole mount table and stays a
// slave of RunDir, so with N sandbox commands running every later
// `ip netns add` or `ip netns del` is propagated to N mount namespaces, and
// each command keeps every namespace that existed when it started alive
// even after the namespace is deleted where the /run/netns mount is not
// shared. Here each command's mount namespace is copied from one base mount
// namespace that has no namespace mounts and no RunDir mount, so set-up and
// removal of namespaces cost the same at 10 sandboxes as at 1,000.
func StartIn(name string, cmd *exec.Cmd) error {
	if err := ValidName(name); err != nil {
		return err
	}
	base, err := baseMountNS()
	if err != nil {
		return err
	}
	target, err := os.Open(Path(name))
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer target.Close()
	etc, err := etcEntries(name)
	if err != nil {
		return err
	}
	onThrowawayThread(func() { err = startInThread(int(base.Fd()), int(target.Fd()), name, etc, cmd) })
	runtime.KeepAlive(base)
	return err
}

// onThrowawayThread runs fn on a locked OS thread that ends afterwards, for
// work that changes the thread's namespaces for good. It is never the main
// thread: the runtime cannot end that one and would keep it, wedged, in the
// changed namespaces, where /proc/PID/ns/* (the main thread's) would show
// them as the whole process's.
func onThrowawayThread(fn func()) {
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// While this goroutine holds the main thread, the next one
			// runs on another.
			onThrowawayThread(fn)
			runtime.UnlockOSThread()
			close(done)
			return
		}
		fn()
		close(done)
		// Never unlocked: the thread ends with this goroutine.
	}()
	<-done
}

// startInThread runs on a locked thread that is thrown away afterwards.
func startInThread(baseFD, netFD int, name string, etc []string, cmd *exec.Cmd) error {
	if err := copyBaseMounts(baseFD); err != nil {
		return err
	}
	for _, e := range etc {
		src, dst := filepath.Join(EtcDir, name, e), filepath.Join("/etc", e)
		if err := unix.Mount(src, dst, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s on %s: %w", src, dst, err)
		}
	}
	if err := unix.Setns(netFD, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter netns %s: %w", name, err)
	}
	if err := remountSys(name); err != nil {
		return err
	}
	return cmd.Start()
}

// copyBaseMounts gives the calling (throwaway) thread its own copy of the
// base mount namespace baseFD.
func copyBaseMounts(baseFD int) error {
	// Go's threads share one fs_struct, and setns into a mount namespace
	// needs a thread with its own.
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return fmt.Errorf("unshare fs: %w", err)
	}
	if err := unix.Setns(baseFD, unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("enter base mount namespace: %w", err)
	}
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare mount namespace: %w", err)
	}
	return nil
}

// remountSys puts a sysfs of the current network namespace on /sys (so
// /sys/class/net lists the sandbox's interfaces), read-only if /sys was.
func remountSys(name string) error {
	var flags uintptr
	var st unix.Statfs_t
	if err := unix.Statfs("/sys", &st); err == nil && st.Flags&unix.ST_RDONLY != 0 {
		flags = unix.MS_RDONLY
	}
	if err := unix.Unmount("/sys", unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount /sys: %w", err)
	}
	if err := unix.Mount(name, "/sys", "sysfs", flags, ""); err != nil {
		return fmt.Errorf("mount sysfs of %s: %w", name, err)
	}
	return nil
}

// etcEntries lists EtcDir/NAME (nothing if it does not exist), skipping
// entries that have no counterpart in /etc to mount over, as iproute2 does.
func etcEntries(name string) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(EtcDir, name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(EtcDir, name), err)
	}
	var out []string
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join("/etc", e.Name())); err == nil {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

var base struct {
	sync.Mutex
	f *os.File
}

// baseMountNS returns the mount namespace commands' namespaces are copied
// from, made on first use: a copy of the caller's, a slave of it (mounts
// made later in the host still appear, as with `ip netns exec`), with
// RunDir and every namespace bind mount taken out.
func baseMountNS() (*os.File, error) {
	base.Lock()
	defer base.Unlock()
	if base.f != nil {
		return base.f, nil
	}
	// RunDir is a mount point first, so that namespaces mounted in it later
	// are its children and not propagated into the base.
	if err := ensureRunDir(); err != nil {
		return nil, err
	}
	var f *os.File
	var err error
	onThrowawayThread(func() { f, err = makeBaseMountNS() })
	if err != nil {
		return nil, fmt.Errorf("base mount namespace for sandbox commands: %w", err)
	}
	base.f = f
	return base.f, nil
}

func makeBaseMountNS() (*os.File, error) {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return nil, fmt.Errorf("unshare: %w", err)
	}
	if err := unix.Mount("", "/", "none", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return nil, fmt.Errorf("make / a slave: %w", err)
	}
	if err := unix.Unmount(RunDir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return nil, fmt.Errorf("unmount %s: %w", RunDir, err)
	}
	mounts, err := nsMounts()
	if err != nil {
		return nil, err
	}
	for _, m := range mounts {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("unmount %s: %w", m, err)
		}
	}
	f, err := os.Open("/proc/thread-self/ns/mnt")
	if err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	return f, nil
}

// nsMounts lists the mount points of namespace files (fstype nsfs) in the
// calling thread's mount namespace.
func nsMounts() ([]string, error) {
	f, err := os.Open("/proc/thread-self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fields := strings.Fields(pre)
		if !ok || len(fields) < 5 || !strings.HasPrefix(post, "nsfs ") {
			continue
		}
		out = append(out, UnescapeMountPath(fields[4]))
	}
	return out, sc.Err()
}

// UnescapeMountPath undoes mountinfo's octal escapes (\040 for a space,
// \011, \012, \134) in a path field.
func UnescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
