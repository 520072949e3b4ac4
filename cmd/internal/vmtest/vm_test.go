package vmtest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// bootKernel skips unless root (qemu's 9p export of / reads every file)
// and the kernel, qemu and busybox are installed.
func bootKernel(t *testing.T, name string) Kernel {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping: boots a VM")
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root")
	}
	if os.Getenv("FABRIC_TEST_KERNEL") != "" {
		t.Skip("skipping: already inside a test VM")
	}
	k, err := Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := k.Installed(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("skipping: needs busybox-static (make deps-kernels)")
	}
	return k
}

// TestRunReportsExitCodesAndSkips boots the oldest kernel of the matrix,
// runs a passing and a failing command, and checks the guest is that
// kernel, sees the host's files, can write, and that the failure and the
// go test result lines come back.
func TestRunReportsExitCodesAndSkips(t *testing.T) {
	k := bootKernel(t, Matrix[0].Name)
	script := `echo "=== RUN   TestA"
echo "--- PASS: TestA (0.00s)"
echo "=== RUN   TestB"
echo "    b_test.go:12: needs 8021q"
echo "--- SKIP: TestB (0.00s)"
uname -r > /vmtest/uname; touch /etc/vmtest-writable && echo writable
test -r /work && exit 0`
	// A clone in the host's /tmp, which the guest mounts afresh: a package
	// directory there and its siblings stay visible.
	clone, err := os.MkdirTemp("/tmp", "fabric-vmtest-clone-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(clone) })
	pkg := filepath.Join(clone, "pkg")
	if err := os.Mkdir(pkg, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(clone, "sibling"), []byte("here\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var console bytes.Buffer
	res, err := Run(context.Background(), Config{
		Kernel:  k,
		Timeout: 5 * time.Minute,
		Output:  &console,
		Commands: []Command{
			{Name: "ok", Dir: "/", Argv: []string{"/bin/sh", "-c", script}, GoTest: true},
			{Name: "bad", Dir: "/", Argv: []string{"/bin/sh", "-c", "exit 3"}},
			{Name: "in-tmp", Dir: pkg, Argv: []string{"/bin/sh", "-c", "grep -q here ../sibling && test -d /run/netns"}},
		},
	})
	t.Logf("console:\n%s", console.String())
	if !errors.Is(err, ErrFailed) {
		t.Fatalf("Run: %v, want ErrFailed", err)
	}
	if !res.Booted || !res.Done || len(res.Commands) != 3 {
		t.Fatalf("result %+v", res)
	}
	if !strings.HasPrefix(res.Release, k.Name+".") {
		t.Errorf("guest release %q, want kernel %s", res.Release, k.Name)
	}
	ok, bad := res.Commands[0], res.Commands[1]
	if ok.Exit != 0 || bad.Exit != 3 {
		t.Errorf("exit codes %d, %d; want 0, 3", ok.Exit, bad.Exit)
	}
	if e := res.Commands[2].Exit; e != 0 {
		t.Errorf("a command in %s (under the host's /tmp) exited %d: its directory or its sibling was not there", pkg, e)
	}
	if ok.Passed != 1 || ok.Skipped != 1 || len(ok.Skips) != 1 || ok.Skips[0] != (Skip{"TestB", "needs 8021q"}) {
		t.Errorf("counts %+v", ok)
	}
	if !strings.Contains(console.String(), "writable") {
		t.Error("the guest could not write to its root")
	}
	if got := res.FailedCommands(); len(got) != 1 || got[0] != "bad" {
		t.Errorf("FailedCommands = %v", got)
	}
}

// TestParseSkipReasons: the reason of a skip is the last line the test
// logged before its "--- SKIP" line, subtests and interleaved parallel
// tests included; counts cover subtests.
func TestParseSkipReasons(t *testing.T) {
	console := strings.Join([]string{
		"noise before the start marker",
		"--- PASS: TestNotCounted (0.00s)",
		"VMTEST-n START pkg",
		"=== RUN   TestA",
		"=== PAUSE TestA",
		"=== RUN   TestB",
		"    b_test.go:10: made a namespace",
		"    b_test.go:12: needs 8021q",
		"--- SKIP: TestB (0.01s)",
		"=== CONT  TestA",
		"=== RUN   TestA/sub",
		"    a_test.go:40: needs ipvlan",
		"        (a continuation line)",
		"=== NAME  TestA",
		"    a_test.go:41: after the subtest",
		"    --- SKIP: TestA/sub (0.00s)",
		"--- PASS: TestA (0.10s)",
		"--- FAIL: TestC (0.10s)",
		"VMTEST-n EXIT pkg 1",
		"VMTEST-n DONE",
	}, "\r\n")
	var r Result
	var out bytes.Buffer
	r.parse(strings.NewReader(console), "n", &out)
	if !r.Done || len(r.Commands) != 1 {
		t.Fatalf("result %+v", r)
	}
	c := r.Commands[0]
	if c.Exit != 1 || c.Passed != 1 || c.Failed != 1 || c.Skipped != 2 {
		t.Errorf("counts %+v", c)
	}
	want := []Skip{{"TestB", "needs 8021q"}, {"TestA/sub", "needs ipvlan"}}
	if len(c.Skips) != 2 || c.Skips[0] != want[0] || c.Skips[1] != want[1] {
		t.Errorf("skips %+v, want %+v", c.Skips, want)
	}
	if strings.Contains(out.String(), "\r") || !strings.Contains(out.String(), "noise before") {
		t.Errorf("console copy %q", out.String())
	}
}

// TestParseCrash: a guest kernel's crash report is recorded (its first
// line), and a test's output that mentions a panic is not one.
func TestParseCrash(t *testing.T) {
	console := strings.Join([]string{
		"VMTEST-n START pkg",
		"=== RUN   TestA",
		"    a_test.go:3: recovered: Kernel panic - not syncing (a string in a test)",
		"[  217.723674] BUG: TASK stack guard page was hit at 0000000048aa1705",
		"[  217.725731] Oops: stack guard page: 0000 [#1] PREEMPT SMP NOPTI",
		"[  219.000001] Kernel panic - not syncing: Fatal exception",
	}, "\n")
	var r Result
	r.parse(strings.NewReader(console), "n", io.Discard)
	if want := "[  217.723674] BUG: TASK stack guard page was hit at 0000000048aa1705"; r.Crash != want || r.Done {
		t.Fatalf("crash %q (done %v), want %q", r.Crash, r.Done, want)
	}
	var clean Result
	clean.parse(strings.NewReader("VMTEST-n START pkg\n    a_test.go:3: Oops: nothing\nVMTEST-n DONE\n"), "n", io.Discard)
	if clean.Crash != "" {
		t.Fatalf("a test's line taken for a crash: %q", clean.Crash)
	}
}

// TestKeptDirs: the directories under the host's /tmp and /run that
// commands work in are kept, from their first level down, once each;
// others add nothing to the guest's script.
func TestKeptDirs(t *testing.T) {
	cmds := []Command{
		{Dir: "/work/main/bpf"},
		{Dir: "/tmp/clone/bpf"},
		{Dir: "/tmp/clone/datapath/ebpf/"},
		{Dir: "/run/ci/x"},
		{Dir: "/tmp"},
		{Dir: "/tmpfoo/x"},
	}
	got := keptDirs(cmds)
	if want := []string{"/tmp/clone", "/run/ci"}; !slices.Equal(got, want) {
		t.Errorf("keptDirs = %q, want %q", got, want)
	}
	script := stage2Script(Config{Commands: cmds[:1]}, "n")
	if strings.Contains(script, "vmtest-keep") {
		t.Errorf("a command outside /tmp and /run changed the mounts:\n%s", script)
	}
	script = stage2Script(Config{Commands: cmds}, "n")
	bind := strings.Index(script, "mount --bind /tmp/clone /.vmtest-keep/0")
	tmp := strings.Index(script, "mount -t tmpfs tmpfs /tmp")
	move := strings.Index(script, "mount --move /.vmtest-keep/0 /tmp/clone")
	if bind < 0 || tmp < 0 || move < 0 || !(bind < tmp && tmp < move) {
		t.Errorf("want bind, fresh /tmp, move back in that order:\n%s", script)
	}
}
