package netns_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// startSleeper starts `sleep 60` with StartIn in the named namespace and
// kills it when the test ends.
func startSleeper(t *testing.T, name string) int {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := netns.StartIn(name, cmd); err != nil {
		t.Fatalf("StartIn %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd.Process.Pid
}

// mountPoints lists the mount points of process pid with their fstype.
func mountPoints(t *testing.T, pid int) map[string]string {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, _ := strings.Cut(sc.Text(), " - ")
		fields := strings.Fields(pre)
		fstype, _, _ := strings.Cut(post, " ")
		if len(fields) >= 5 {
			out[fields[4]] = fstype
		}
	}
	return out
}

// TestStartInIsIPNetnsExecWithoutNamespaceMounts: the command runs in the
// named namespace, sees /etc/netns/NAME/resolv.conf as /etc/resolv.conf and
// a sysfs on /sys, as under `ip netns exec`; and its mount namespace holds
// no namespace mount at all (`ip netns exec` copies every one under
// /var/run/netns, its own included, and keeps receiving new ones).
func TestStartInIsIPNetnsExecWithoutNamespaceMounts(t *testing.T) {
	netnstest.RequireRoot(t)
	name, path := netnstest.New(t, "nsx")
	etc := filepath.Join(netns.EtcDir, name)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(etc) })
	want := "nameserver 127.0.0.11 # " + name + "\n"
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte(want), 0o644); err != nil {
		t.Fatal(err)
	}
	pid := startSleeper(t, name)
	id, _ := netns.IDOf(path)
	if got, err := netns.IDOf("/proc/" + strconv.Itoa(pid) + "/ns/net"); err != nil || got != id {
		t.Fatalf("command's netns %v (err %v), want %v", got, err, id)
	}
	got, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/root/etc/resolv.conf")
	if err != nil || string(got) != want {
		t.Fatalf("command's /etc/resolv.conf = %q (err %v), want %q", got, err, want)
	}
	if own, _ := os.ReadFile("/etc/resolv.conf"); string(own) == want {
		t.Fatal("the host's /etc/resolv.conf was replaced")
	}
	mounts := mountPoints(t, pid)
	if mounts["/sys"] != "sysfs" {
		t.Errorf("no sysfs on the command's /sys: %v", mounts)
	}
	for mp, fstype := range mounts {
		if fstype == "nsfs" || strings.HasSuffix(mp, "/netns") {
			t.Errorf("the command's mount namespace holds %s (%s)", mp, fstype)
		}
	}
	// A namespace created afterwards is not propagated into it either:
	// with N commands, every create would be copied N times.
	before := len(mounts)
	netnstest.New(t, "nsy")
	if after := len(mountPoints(t, pid)); after != before {
		t.Errorf("the command's mount table went from %d to %d entries when a namespace was created", before, after)
	}
	// The caller's thread and mounts are untouched.
	if self, _ := netns.IDOf("/proc/thread-self/ns/net"); self == id {
		t.Fatal("the calling thread was left in the sandbox's namespace")
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := mountPoints(t, os.Getpid())[real]; !ok {
		t.Fatalf("%s is no longer mounted in the caller's mount namespace", real)
	}
}

// TestStartInRefusesABadName: a bad or missing namespace is an error and
// no process is started.
func TestStartInRefusesABadName(t *testing.T) {
	netnstest.RequireRoot(t)
	for _, name := range []string{"../x", netnstest.UniqueName("nsmissing")} {
		cmd := exec.Command("true")
		if err := netns.StartIn(name, cmd); err == nil {
			_ = cmd.Wait()
			t.Errorf("StartIn(%q) started a command", name)
		} else if cmd.Process != nil {
			t.Errorf("StartIn(%q) failed (%v) but a process was started", name, err)
		}
	}
}

// TestStartInManyCommandsStayFlat: starting commands in many namespaces
// leaves each command's mount table the same size (it does not hold the
// namespaces made before it), so the kernel's work per namespace create or
// delete does not grow with the number of commands.
func TestStartInManyCommandsStayFlat(t *testing.T) {
	netnstest.RequireRoot(t)
	// The process's namespaces as /proc/PID/ns shows them (its main
	// thread's) stay the caller's: the thrown-away threads never include
	// the main one.
	selfNet, _ := netns.IDOf("/proc/self/ns/net")
	selfMnt, _ := netns.IDOf("/proc/self/ns/mnt")
	deadline := time.Now().Add(time.Minute)
	var sizes []int
	for i := 0; i < 20 && time.Now().Before(deadline); i++ {
		name, _ := netnstest.New(t, "nsf")
		sizes = append(sizes, len(mountPoints(t, startSleeper(t, name))))
		runtime.Gosched()
	}
	if n, _ := netns.IDOf("/proc/self/ns/net"); n != selfNet {
		t.Error("the process's main thread was left in a sandbox's network namespace")
	}
	if m, _ := netns.IDOf("/proc/self/ns/mnt"); m != selfMnt {
		t.Error("the process's main thread was left in another mount namespace")
	}
	for i, n := range sizes {
		if n != sizes[0] {
			t.Fatalf("command %d has %d mounts, the first had %d: %v", i, n, sizes[0], sizes)
		}
	}
}
