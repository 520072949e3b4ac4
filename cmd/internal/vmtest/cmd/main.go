// Command cmd runs chosen packages' tests as root inside each kernel of
// the matrix (make test-kernels): it builds the test binaries and the
// fabric binaries on the host, boots every kernel under qemu, streams the
// guests' consoles and prints, per kernel, what passed, failed and
// skipped (with the reasons) and the wall time.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/vmtest"
)

// defaultPackages are the tests whose outcome depends on the kernel: the
// eBPF programs and datapath (verifier, TCX or clsact), the kernel
// datapath (macvlan, ipvlan, VLAN), the end-to-end macvlan tests and the
// lab's chaos test (netem).
const defaultPackages = "./bpf,./datapath/ebpf,./datapath/kernel,./cmd/internal/e2e,./cmd/internal/lab"

// defaultRun narrows the end-to-end package to its macvlan, ipvlan and
// VLAN tests: the rest does not depend on the kernel and would not fit
// CI's time under emulation.
const defaultRun = "./cmd/internal/e2e=Macvlan|IPvlan|VLAN,./cmd/internal/lab=TestChaos"

// onlyOn pins packages to one kernel of the matrix, to keep CI's budget
// (the whole of .ci/run under 30 minutes on 2 cores, everything emulated
// in the guests) while every kernel-dependent part runs somewhere:
//   - the lab's chaos test needs netem, which every matrix kernel has, and
//     minutes of emulated time: the newest kernel;
//   - the end-to-end macvlan/ipvlan/VLAN tests (through the agent) run on
//     the newest kernel, the kernel datapath's own tests (macvlan, ipvlan
//     l2/l3/l3s, VLAN sub-interfaces, nftables, bridges) on the oldest,
//     so 802.1q and ipvlan are shown on both;
//   - the eBPF programs and datapath, whose verifier and attach modes
//     (clsact on 6.1, TCX on 6.12) differ most, run on every kernel.
var onlyOn = map[string]string{
	"cmd/internal/lab": "newest",
	"cmd/internal/e2e": "newest",
	"datapath/kernel":  "oldest",
}

func main() {
	kernels := flag.String("kernels", "", "comma-separated kernels of the matrix to boot (default: all)")
	pkgs := flag.String("pkgs", defaultPackages, "comma-separated packages whose tests run in the guests")
	run := flag.String("run", defaultRun, "only tests matching this regexp (go test -run); per package as pkg=regexp,... when it contains '='")
	timeout := flag.Duration("timeout", 15*time.Minute, "time limit per VM, boot to power-off")
	testTimeout := flag.Duration("test-timeout", 10*time.Minute, "go test -timeout of each test binary")
	cpus := flag.Int("cpus", 2, "vCPUs per VM")
	mem := flag.Int("mem", 2048, "guest memory in MiB")
	quiet := flag.Bool("q", false, "do not stream the guests' consoles")
	shell := flag.String("sh", "", "run this shell command in each guest instead of the tests (debugging)")
	listPkgs := flag.Bool("list-packages", false, "print the Debian packages the runner needs (apt-ensure specs) and exit")
	flag.Parse()

	if *listPkgs {
		specs := append([]string{}, vmtest.HostPackages...)
		for _, k := range vmtest.Matrix {
			specs = append(specs, k.Package+":/usr/share/doc/"+k.Package)
		}
		fmt.Println(strings.Join(specs, " "))
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runMatrix(ctx, options{
		kernels: *kernels, pkgs: *pkgs, run: *run, timeout: *timeout, testTimeout: *testTimeout,
		cpus: *cpus, mem: *mem, quiet: *quiet, shell: *shell,
	}); err != nil {
		fmt.Fprintln(os.Stderr, "test-kernels:", err)
		os.Exit(1)
	}
}

type options struct {
	kernels, pkgs, run   string
	shell                string
	timeout, testTimeout time.Duration
	cpus, mem            int
	quiet                bool
}

// selectKernels is the matrix, or the kernels a -kernels list names.
func selectKernels(names string) ([]vmtest.Kernel, error) {
	if names == "" {
		return vmtest.Matrix, nil
	}
	var matrix []vmtest.Kernel
	for _, name := range strings.Split(names, ",") {
		k, err := vmtest.Lookup(strings.TrimSpace(name))
		if err != nil {
			return nil, err
		}
		matrix = append(matrix, k)
	}
	return matrix, nil
}

func runMatrix(ctx context.Context, o options) error {
	matrix, err := selectKernels(o.kernels)
	if err != nil {
		return err
	}
	// Not under /tmp: the guest mounts its own tmpfs there.
	dir, err := os.MkdirTemp("/var/tmp", "fabric-test-kernels-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cmds, err := buildTests(ctx, dir, o)
	if err != nil {
		return err
	}
	if o.shell != "" {
		wd, _ := os.Getwd()
		cmds = []vmtest.Command{{Name: "sh", Dir: wd, Argv: []string{"/bin/sh", "-c", o.shell}}}
	}
	// The kernels boot side by side, each guest on one host thread
	// (vmtest runs TCG single-threaded), so the matrix takes as long as
	// its slowest kernel.
	out := &lockedWriter{w: os.Stdout}
	results := make([]*vmtest.Result, len(matrix))
	errs := make([]error, len(matrix))
	crashes := make([]string, len(matrix))
	var wg sync.WaitGroup
	for i, k := range matrix {
		kcmds := forKernel(cmds, k)
		fmt.Fprintf(out, "==> kernel %s: booting, running %d test binaries\n", k.Name, len(kcmds))
		cfg := vmtest.Config{
			Kernel: k, Commands: kcmds, CPUs: o.cpus, MemoryMiB: o.mem, Timeout: o.timeout,
			Env: []string{"FABRIC_TEST_BINDIR=" + filepath.Join(dir, "bin"), "FABRIC_TEST_KERNEL=" + k.Name},
		}
		if !o.quiet {
			cfg.Output = &prefixWriter{prefix: "[" + k.Name + "] ", w: out}
		}
		wg.Go(func() {
			results[i], errs[i] = vmtest.Run(ctx, cfg)
			// A guest whose kernel crashed ran no verdict. Under TCG the
			// 6.12 guest has crashed now and then at random points (an int3
			// Oops at a static-key site, a stack-guard Oops in the page
			// fault handler) in runs that pass when repeated: one more boot,
			// and the crash stays in the output and the summary.
			if r := results[i]; errs[i] != nil && r != nil && r.Crash != "" && ctx.Err() == nil {
				crashes[i] = r.Crash
				fmt.Fprintf(out, "==> kernel %s: the guest kernel crashed (%s); booting it once more\n", k.Name, r.Crash)
				results[i], errs[i] = vmtest.Run(ctx, cfg)
			}
		})
	}
	wg.Wait()
	var failed []string
	for i, err := range errs {
		if err != nil {
			fmt.Fprintln(out, "==>", err)
			failed = append(failed, matrix[i].Name)
		}
	}
	results = slices.DeleteFunc(results, func(r *vmtest.Result) bool { return r == nil })
	defer func() {
		for i, c := range crashes {
			if c != "" {
				fmt.Printf("note: the first %s guest crashed (%s) and was booted again\n", matrix[i].Name, c)
			}
		}
	}()
	fmt.Println()
	for _, r := range results {
		r.Summary(os.Stdout)
	}
	if len(failed) > 0 {
		return fmt.Errorf("failed on %s", strings.Join(failed, ", "))
	}
	return nil
}

// forKernel drops the packages pinned by onlyOn to another kernel of the
// matrix than k.
func forKernel(cmds []vmtest.Command, k vmtest.Kernel) []vmtest.Command {
	pinned := map[string]vmtest.Kernel{"oldest": vmtest.Matrix[0], "newest": vmtest.Matrix[len(vmtest.Matrix)-1]}
	var out []vmtest.Command
	for _, c := range cmds {
		if where, ok := onlyOn[c.Name]; ok && pinned[where] != k {
			fmt.Printf("==> kernel %s: %s runs on kernel %s only\n", k.Name, c.Name, pinned[where].Name)
			continue
		}
		out = append(out, c)
	}
	return out
}

// buildTests compiles each package's test binary and the fabric binaries
// into dir and returns the guest commands that run them.
func buildTests(ctx context.Context, dir string, o options) ([]vmtest.Command, error) {
	bin := filepath.Join(dir, "bin")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin+"/", "./cmd/fabricd", "./cmd/fabricctl")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		return nil, fmt.Errorf("build fabric: %w", err)
	}
	var cmds []vmtest.Command
	for _, pkg := range strings.Split(o.pkgs, ",") {
		pkg = strings.TrimSpace(pkg)
		if pkg == "" {
			continue
		}
		name := strings.TrimPrefix(filepath.Clean(pkg), "./")
		exe := filepath.Join(dir, strings.ReplaceAll(name, "/", "_")+".test")
		c := exec.CommandContext(ctx, "go", "test", "-c", "-o", exe, pkg)
		c.Stdout, c.Stderr = os.Stdout, os.Stderr
		if err := c.Run(); err != nil {
			return nil, fmt.Errorf("build tests of %s: %w", pkg, err)
		}
		if _, err := os.Stat(exe); errors.Is(err, os.ErrNotExist) {
			continue // no tests
		}
		pkgDir, err := filepath.Abs(pkg)
		if err != nil {
			return nil, err
		}
		argv := []string{exe, "-test.v", "-test.count=1", "-test.timeout=" + o.testTimeout.String()}
		if re := runFor(o.run, name); re != "" {
			argv = append(argv, "-test.run="+re)
		}
		cmds = append(cmds, vmtest.Command{Name: name, Dir: pkgDir, Argv: argv, GoTest: true})
	}
	return cmds, nil
}

// runFor returns the -run regexp for package name: run as is, or the
// entry for name when run is a list of pkg=regexp.
func runFor(run, name string) string {
	if !strings.Contains(run, "=") {
		return run
	}
	for _, e := range strings.Split(run, ",") {
		if p, re, ok := strings.Cut(e, "="); ok && strings.TrimPrefix(filepath.Clean(p), "./") == name {
			return re
		}
	}
	return ""
}

// prefixWriter tags each line with the kernel it came from.
type prefixWriter struct {
	prefix string
	w      io.Writer
	part   []byte // the start of a line not ended yet
}

// Write writes whole lines only, each with the prefix: the consoles of
// kernels running side by side share w.
func (p *prefixWriter) Write(b []byte) (int, error) {
	p.part = append(p.part, b...)
	for {
		i := bytes.IndexByte(p.part, '\n')
		if i < 0 {
			return len(b), nil
		}
		if _, err := io.WriteString(p.w, p.prefix+string(p.part[:i+1])); err != nil {
			return 0, err
		}
		p.part = p.part[i+1:]
	}
}

// lockedWriter serialises the writes of the kernels' consoles, so their
// lines do not interleave.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
