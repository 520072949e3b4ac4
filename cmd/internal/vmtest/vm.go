package vmtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Command is one thing to run inside the guest, as root.
type Command struct {
	Name string   // shown in reports ("bpf", "datapath/kernel")
	Dir  string   // working directory (a host path: the guest sees the host's /)
	Argv []string // program and arguments (host paths)
	// GoTest says the output is `go test -v` output to count.
	GoTest bool
}

// Config is one VM run.
type Config struct {
	Kernel    Kernel
	Commands  []Command
	Env       []string      // extra environment for the commands (KEY=VALUE)
	CPUs      int           // vCPUs; 2 if zero
	MemoryMiB int           // guest memory; 2048 if zero
	Timeout   time.Duration // whole run, boot to power-off; 20 min if zero
	Output    io.Writer     // the guest console, streamed; discarded if nil
}

// ErrFailed is wrapped by Run's error when a command exited non-zero.
var ErrFailed = errors.New("commands failed in the guest")

// Run boots cfg.Kernel, runs the commands one after the other (all of
// them, even after a failure), powers off and returns what happened. The
// error wraps ErrFailed when a command failed; other errors mean the VM
// did not boot or finish (the Result still holds what was seen).
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.CPUs == 0 {
		cfg.CPUs = 2
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 2048
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 20 * time.Minute
	}
	if cfg.Output == nil {
		cfg.Output = io.Discard
	}
	image, release, err := cfg.Kernel.Installed()
	if err != nil {
		return nil, err
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return nil, fmt.Errorf("vmtest: qemu-system-x86_64 (Debian package qemu-system-x86; make deps-kernels): %w", err)
	}
	work, err := os.MkdirTemp("", "fabric-vmtest-")
	if err != nil {
		return nil, fmt.Errorf("vmtest: %w", err)
	}
	defer os.RemoveAll(work)
	shared := filepath.Join(work, "shared")
	if err := os.Mkdir(shared, 0o755); err != nil {
		return nil, fmt.Errorf("vmtest: %w", err)
	}
	initrd := filepath.Join(work, "initramfs.cpio")
	if err := writeInitramfs(initrd, release); err != nil {
		return nil, err
	}
	nonce := randomNonce()
	if err := os.WriteFile(filepath.Join(shared, "stage2.sh"), []byte(stage2Script(cfg, nonce)), 0o755); err != nil {
		return nil, fmt.Errorf("vmtest: %w", err)
	}

	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, qemuArgs(cfg, image, initrd, shared)...)
	cmd.WaitDelay = 5 * time.Second
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	res := &Result{Kernel: cfg.Kernel.Name, Release: release}
	parsed := make(chan struct{})
	go func() {
		defer close(parsed)
		res.parse(pr, nonce, cfg.Output)
		_, _ = io.Copy(io.Discard, pr)
	}()
	start := time.Now()
	runErr := cmd.Run()
	pw.Close()
	<-parsed
	res.Wall = time.Since(start)

	switch {
	case ctx.Err() != nil:
		return res, fmt.Errorf("vmtest %s: no power-off within %s (%d of %d commands finished): %w", cfg.Kernel.Name, cfg.Timeout, len(res.Commands), len(cfg.Commands), ctx.Err())
	case runErr != nil:
		return res, fmt.Errorf("vmtest %s: qemu: %w", cfg.Kernel.Name, runErr)
	case !res.Done:
		return res, fmt.Errorf("vmtest %s: the guest powered off before finishing (%d of %d commands ran; see the console above)", cfg.Kernel.Name, len(res.Commands), len(cfg.Commands))
	}
	if failed := res.FailedCommands(); len(failed) > 0 {
		return res, fmt.Errorf("vmtest %s: %s: %w", cfg.Kernel.Name, strings.Join(failed, ", "), ErrFailed)
	}
	return res, nil
}

func writeInitramfs(path, release string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("vmtest: %w", err)
	}
	if err := buildInitramfs(f, "/bin/busybox", release); err != nil {
		f.Close()
		return fmt.Errorf("vmtest: %w (busybox-static; make deps-kernels)", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("vmtest: %w", err)
	}
	return nil
}

func qemuArgs(cfg Config, image, initrd, shared string) []string {
	return []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-machine", "q35", "-accel", "tcg,thread=single", "-cpu", "max",
		"-smp", strconv.Itoa(cfg.CPUs), "-m", strconv.Itoa(cfg.MemoryMiB),
		"-kernel", image, "-initrd", initrd,
		"-append", "console=ttyS0 loglevel=1 panic=-1 rdinit=/init",
		"-serial", "stdio",
		"-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
		"-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
		"-fsdev", "local,id=vmtest,path=" + shared + ",security_model=none,multidevs=remap",
		"-device", "virtio-9p-pci,fsdev=vmtest,mount_tag=vmtest",
	}
}

// stage2Script runs as the guest's PID 1 after switch_root: it mounts
// what a Linux system has, runs the commands with markers around each and
// powers off.
func stage2Script(cfg Config, nonce string) string {
	var b strings.Builder
	b.WriteString(`#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
`)
	// The guest gets a fresh /tmp and /run. A command's directory in the
	// host's /tmp or /run (a clone there) is bind-mounted aside first and
	// moved back on top of them, whole from its first level down (a
	// package's tests reach the rest of the repository).
	kept := keptDirs(cfg.Commands)
	for i, d := range kept {
		fmt.Fprintf(&b, "mkdir -p /.vmtest-keep/%d && mount --bind %s /.vmtest-keep/%d\n", i, shellQuote(d), i)
	}
	b.WriteString(`mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
`)
	for i, d := range kept {
		fmt.Fprintf(&b, "mkdir -p %s && mount --move /.vmtest-keep/%d %s\n", shellQuote(d), i, shellQuote(d))
	}
	b.WriteString(`mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mkdir -p /run/netns /var/run
ip link set lo up
hostname vmtest
`)
	fmt.Fprintf(&b, "echo %s BOOTED $(uname -r) $(nproc)\n", marker(nonce))
	for _, kv := range cfg.Env {
		fmt.Fprintf(&b, "export %s\n", shellQuote(kv))
	}
	for _, c := range cfg.Commands {
		argv := make([]string, len(c.Argv))
		for i, a := range c.Argv {
			argv[i] = shellQuote(a)
		}
		fmt.Fprintf(&b, "echo %s START %s\n", marker(nonce), shellQuote(c.Name))
		fmt.Fprintf(&b, "(cd %s && exec %s) </dev/null 2>&1\n", shellQuote(c.Dir), strings.Join(argv, " "))
		fmt.Fprintf(&b, "echo %s EXIT %s $?\n", marker(nonce), shellQuote(c.Name))
	}
	fmt.Fprintf(&b, "echo %s DONE\nsync\n/bin/busybox poweroff -f\n", marker(nonce))
	return b.String()
}

// keptDirs are the first-level directories of /tmp and /run that hold a
// command's directory, once each, in order.
func keptDirs(cmds []Command) []string {
	var out []string
	for _, c := range cmds {
		d := filepath.Clean(c.Dir)
		for _, top := range []string{"/tmp/", "/run/"} {
			rest, ok := strings.CutPrefix(d+"/", top)
			if !ok || rest == "" {
				continue
			}
			first, _, _ := strings.Cut(rest, "/")
			if k := top + first; !slices.Contains(out, k) {
				out = append(out, k)
			}
		}
	}
	return out
}

func marker(nonce string) string { return "VMTEST-" + nonce }

func randomNonce() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r == '/' || r == '.' || r == '-' || r == '_' || r == '=' || r == ':' || r == ',' ||
			r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// stripCR drops the carriage returns of the serial console's line ends.
func stripCR(b []byte) []byte { return bytes.TrimRight(b, "\r") }
