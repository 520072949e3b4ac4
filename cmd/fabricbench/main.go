// Command fabricbench measures fabric against the kernel baseline (raw veth,
// Linux bridge, nftables DNAT), Docker's userland proxy and, for set-up
// times, the reference numbers of DESIGN.md, all in one run on one machine.
//
// Everything happens in network namespaces it creates (prefix fbb-<pid>-):
// two "hosts" h1 and h2 joined by a veth underlay (192.168.250.0/24), on h1 a
// hand-made Linux bridge with two "containers" c1a and c1b (10.77.0.0/16,
// exactly like shared/bench/baseline-lab.sh) and a fabricd with two sandboxes
// fa and fb made by `fabricctl run -d`. Each figure is the median of -reps
// alternating repetitions (rep 1 of every row, then rep 2 of every row, …),
// and every row is also given as a ratio to its reference row: compare only
// numbers taken in the same run.
//
// Usage: fabricbench -bin DIR [-t SECONDS] [-reps N] [-setup-n N] [-scale-n N,N,…] [-density-n N,N,…] [-membership-n N,N,…] [-quick]
// [-only same-host,udp-pps,published,connrate,bpf-cost,setup,cross-host,overlay,membership,dns,scale,density,cni,docker] [-fabricd-flags "FLAGS"]
//
// Sections:
//   - same-host: iperf3 (one TCP stream) and sockperf TCP ping-pong (one-way
//     p50/p99) for raw veth h1→h2, kernel bridge c1a→c1b, fabric fa→fb.
//   - udp-pps: 64-byte UDP datagrams/s received (iperf3 -u -l 64 -b 0, one
//     sender, one receiver) for raw veth, kernel bridge, fabric fa→fb and
//     fabric on the kernel datapath ka→kb (a second fabricd started with
//     --datapath kernel in a host namespace k1 of its own).
//   - published: iperf3 to a published port from h2 (nft DNAT, docker-proxy,
//     fabric) and from h1 itself via 127.0.0.1 (docker-proxy, fabric).
//   - connrate: wrk, one request per connection, from h2 through the
//     published HTTP port (nft DNAT, docker-proxy, fabric).
//   - bpf-cost: the kernel's run-time statistics of fabric's eBPF programs
//     (BPF_ENABLE_STATS) while fabric's same-host, published-port and
//     new-connection paths run: runs/s, ns per run and share of a CPU per
//     program, the profile of where the datapath's time goes (this VM
//     exposes no hardware counters for `bpftool prog profile`).
//   - setup: -setup-n sandboxes via the fabricctl binary and via the API
//     client, time until the new address answers ping from h1, and the
//     time of `sandbox rm`, next to DESIGN.md's Docker/CNI numbers.
//   - cross-host: iperf3 and sockperf between hosts: raw underlay, the
//     kernel VXLAN overlay of baseline-lab.sh, and fabric's macvlan and
//     ipvlan networks (a second fabricd runs on h2).
//   - overlay: fabric's overlay across hosts of two labs of its own
//     (cmd/internal/lab, like `fabricctl lab up`; eBPF and kernel datapath):
//     iperf3 with retransmits and sockperf sandbox↔sandbox against the raw
//     lab underlay; time from `run -d` to the first TCP connect from
//     another host; failure detection after kill -9 of an agent.
//   - membership: gossip membership convergence of -membership-n (50, 200,
//     1,000) in-process members, each with the production configuration:
//     full view, failure seen by all, memory and goroutines per member. It
//     needs no lab: `-only membership` sets none up.
//   - dns: queries/s and p50/p99 of the embedded DNS server from inside a
//     sandbox, local and forwarded names (fake upstream on h1's loopback),
//     1 and 100 clients, next to DESIGN.md's Docker figure.
//   - scale: for each N of -scale-n (10, 100, 1000), filler sandboxes bring
//     the endpoints of the fabric host up to N, each publishing a TCP port;
//     then a TCP stream and new connections/s through a published port from
//     h2, and the set-up time of new sandboxes (create until ping answers),
//     each as a ratio to the first N. For the eBPF agent on h1 and the
//     kernel-datapath agent on k1, alternating.
//   - density: for each N of -density-n (10, 300, 1000), both agents grown
//     to N sandboxes each running a command; the agent's RSS and heap per
//     sandbox (growth since the first N), stack, goroutines, OS threads,
//     and the set-up time of one more sandbox with a command.
//   - cni: fabric-cni against Debian's bridge + host-local (+ portmap)
//     chain, both through libcni in h1: ADD time of -setup-n pods each
//     (alternating), a TCP stream and ping-pong pod → pod, and new
//     connections/s through a hostPort from h2 (portMappings against
//     portmap). Needs `make deps-cni` (containernetworking-plugins).
//   - docker: real Docker (docker.io) on two more hosts joined to h2, one
//     with Docker's own bridge driver, iptables DNAT and docker-proxy (the
//     reference), one with fabric through fabricd --docker-plugin:
//     container ↔ container iperf3 and sockperf, one stream to a published
//     port from h2 and from 127.0.0.1, new connections/s through it, and
//     p50 of `docker run -d` until the container answers ping and of
//     `docker network connect`, alternating between the two.
//
// A fabric that cannot start leaves its rows "n/a" with the reason; the
// kernel rows are measured anyway.
//
// Needs root and iproute2, util-linux (nsenter), nftables, iperf3, sockperf,
// wrk and docker.io (for docker-proxy); `make deps-bench` installs them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// serveArg as first argument turns fabricbench into the in-namespace server
// helper (see serve.go); it is how the benchmark re-executes itself inside
// baseline containers and fabric sandboxes.
const serveArg = "__fabricbench-serve"

// sections in the order they run.
var allSections = []string{"same-host", "udp-pps", "published", "connrate", "bpf-cost", "setup", "cross-host", "overlay", "membership", "dns", "scale", "density", "cni", "docker"}

type options struct {
	bin       string
	secs      int
	reps      int
	setupN    int
	scaleN    []int
	densityN  []int
	membersN  []int
	quick     bool
	only      map[string]bool
	fabricArg string
}

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case serveArg:
			os.Exit(serveMain(os.Args[2:]))
		case dnsLoadArg:
			os.Exit(dnsLoadMain(os.Args[2:]))
		case dnsUpstreamArg:
			os.Exit(dnsUpstreamMain(os.Args[2:]))
		}
	}
	os.Exit(run())
}

func parseFlags() (options, error) {
	var o options
	var only, scaleN, densityN, membersN string
	fs := flag.NewFlagSet("fabricbench", flag.ContinueOnError)
	fs.StringVar(&o.bin, "bin", "bin", "directory holding fabricd and fabricctl")
	fs.IntVar(&o.secs, "t", 5, "seconds per measurement")
	fs.IntVar(&o.reps, "reps", 3, "alternating repetitions per row (the median is reported)")
	fs.IntVar(&o.setupN, "setup-n", 50, "sandboxes per method in the setup section")
	fs.StringVar(&scaleN, "scale-n", defaultScaleN, "endpoint counts of the scale section, ascending; ratios are to the first")
	fs.StringVar(&densityN, "density-n", defaultDensityN, "sandbox counts of the density section, ascending; per-sandbox figures are from the first")
	fs.StringVar(&membersN, "membership-n", defaultMembershipN, "cluster sizes of the membership section, ascending")
	fs.BoolVar(&o.quick, "quick", false, "smoke run: -t 2 -reps 1 (and -setup-n 10, -scale-n "+quickScaleN+" unless given)")
	fs.StringVar(&only, "only", "", "comma-separated sections to run: "+strings.Join(allSections, ","))
	fs.StringVar(&o.fabricArg, "fabricd-flags", "", "extra flags for fabricd, space-separated (e.g. \"--datapath kernel\")")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, `fabricbench measures fabric against the kernel baseline, Docker's userland
proxy and raw veth, in network namespaces it creates and removes itself.
Needs root. Sections: %s.

Usage: fabricbench [flags]

Flags:
`, strings.Join(allSections, ", "))
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q (all options are flags)", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.quick {
		o.quickDefaults(set, &scaleN, &densityN, &membersN)
	}
	var err error
	if o.scaleN, err = parseScaleN(scaleN); err != nil {
		return o, fmt.Errorf("-scale-n %s: %w", scaleN, err)
	}
	if o.densityN, err = parseScaleN(densityN); err != nil {
		return o, fmt.Errorf("-density-n %s: %w", densityN, err)
	}
	if o.membersN, err = parseScaleN(membersN); err != nil {
		return o, fmt.Errorf("-membership-n %s: %w", membersN, err)
	}
	if o.membersN[0] < 3 {
		return o, fmt.Errorf("-membership-n %s: want sizes of at least 3 members", membersN)
	}
	switch {
	case o.secs < 1 || o.secs > 600:
		return o, fmt.Errorf("-t %d: want 1 to 600 seconds", o.secs)
	case o.reps < 1 || o.reps > 50:
		return o, fmt.Errorf("-reps %d: want 1 to 50", o.reps)
	case o.setupN < 1 || o.setupN > 1000:
		return o, fmt.Errorf("-setup-n %d: want 1 to 1000", o.setupN)
	}
	if o.only, err = parseOnly(only); err != nil {
		return o, err
	}
	abs, err := filepath.Abs(o.bin)
	if err != nil {
		return o, fmt.Errorf("-bin %s: %w", o.bin, err)
	}
	o.bin = abs
	return o, nil
}

// quickDefaults sets what -quick changes, for the flags not given (set).
func (o *options) quickDefaults(set map[string]bool, scaleN, densityN, membersN *string) {
	if !set["t"] {
		o.secs = 2
	}
	if !set["reps"] {
		o.reps = 1
	}
	if !set["setup-n"] {
		o.setupN = 10
	}
	if !set["scale-n"] {
		*scaleN = quickScaleN
	}
	if !set["density-n"] {
		*densityN = quickDensityN
	}
	if !set["membership-n"] {
		*membersN = quickMembershipN
	}
}

// parseOnly turns -only's comma-separated sections into a set; empty
// means all of them.
func parseOnly(only string) (map[string]bool, error) {
	sections := map[string]bool{}
	if only == "" {
		for _, s := range allSections {
			sections[s] = true
		}
		return sections, nil
	}
	for _, s := range strings.Split(only, ",") {
		s = strings.TrimSpace(s)
		if !contains(allSections, s) {
			return nil, fmt.Errorf("-only: unknown section %q (want some of %s)", s, strings.Join(allSections, ","))
		}
		sections[s] = true
	}
	return sections, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func run() int {
	o, err := parseFlags()
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "fabricbench: %v\n", err)
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "fabricbench: must run as root (it creates network namespaces, veths and nftables rules)")
		return 2
	}
	if err := checkTools(o); err != nil {
		fmt.Fprintf(os.Stderr, "fabricbench: %v\n", err)
		return 2
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lab := newLab(o)
	stopOnSignal(cancel, lab)
	defer lab.cleanup()

	printHeader(o)
	if err := lab.setupFor(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "fabricbench: set up the lab: %v\n", err)
		return 1
	}
	if lab.fabricErr != nil {
		fmt.Printf("fabric: unavailable (%v)\n\n", lab.fabricErr)
	} else if len(lab.fabricWarnings) > 0 {
		fmt.Printf("fabric status warnings: %s\n\n", strings.Join(lab.fabricWarnings, "; "))
	}
	failed := false
	for _, s := range allSections {
		if !o.only[s] {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		if err := lab.section(s)(ctx); err != nil && ctx.Err() == nil {
			fmt.Printf("section %s failed: %v\n\n", s, err)
			failed = true
		}
	}
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "fabricbench: interrupted")
		return 130
	}
	if failed {
		return 1
	}
	return 0
}

// stopOnSignal makes SIGINT/SIGTERM/SIGHUP cancel the run (whose deferred
// cleanup removes everything); if the run does not come back within 30 s
// or a second signal comes, it cleans up from here and exits.
func stopOnSignal(cancel context.CancelFunc, lab *Lab) {
	sigc := make(chan os.Signal, 2)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigc
		fmt.Fprintf(os.Stderr, "\nfabricbench: %v: stopping and cleaning up…\n", s)
		cancel()
		select {
		case <-sigc:
		case <-time.After(30 * time.Second):
		}
		lab.cleanup()
		os.Exit(130)
	}()
}

// section is the function that runs the section named s, nil if there is
// none (every name in allSections has one: TestEverySectionRuns).
func (l *Lab) section(s string) func(context.Context) error {
	switch s {
	case "same-host":
		return l.sectionSameHost
	case "published":
		return l.sectionPublished
	case "connrate":
		return l.sectionConnRate
	case "setup":
		return l.sectionSetup
	case "cross-host":
		return l.sectionCrossHost
	case "overlay":
		return l.sectionOverlay
	case "membership":
		return l.sectionMembership
	case "dns":
		return l.sectionDNS
	case "udp-pps":
		return l.sectionUDPPPS
	case "scale":
		return l.sectionScale
	case "density":
		return l.sectionDensity
	case "bpf-cost":
		return l.sectionBPFCost
	case "cni":
		return l.sectionCNI
	case "docker":
		return l.sectionDocker
	}
	return nil
}

// tool is a command the benchmark runs and the Debian package that has it.
type tool struct{ cmd, pkg string }

func checkTools(o options) error {
	need := []tool{{"ip", "iproute2"}, {"nsenter", "util-linux"}, {"sysctl", "procps"}}
	if o.only["same-host"] {
		need = append(need, tool{"iperf3", "iperf3"}, tool{"sockperf", "sockperf"})
	}
	if o.only["udp-pps"] {
		need = append(need, tool{"iperf3", "iperf3"})
	}
	if o.only["bpf-cost"] {
		need = append(need, tool{"iperf3", "iperf3"}, tool{"wrk", "wrk"})
	}
	if o.only["scale"] {
		need = append(need, tool{"iperf3", "iperf3"}, tool{"wrk", "wrk"})
	}
	if o.only["overlay"] || o.only["cross-host"] {
		need = append(need, tool{"iperf3", "iperf3"}, tool{"sockperf", "sockperf"})
	}
	if o.only["published"] {
		need = append(need, tool{"iperf3", "iperf3"}, tool{"nft", "nftables"}, tool{"docker-proxy", "docker.io"})
	}
	if o.only["cni"] {
		need = append(need, tool{"iperf3", "iperf3"}, tool{"sockperf", "sockperf"}, tool{"wrk", "wrk"}, tool{"iptables", "iptables"})
	}
	if o.only["docker"] {
		need = append(need, tool{"iperf3", "iperf3"}, tool{"sockperf", "sockperf"}, tool{"wrk", "wrk"},
			tool{"dockerd", "docker.io"}, tool{"docker", "docker.io"}, tool{"docker-proxy", "docker.io"},
			tool{"iptables", "iptables"}, tool{"unshare", "util-linux"}, tool{"busybox", "busybox-static"})
	}
	if o.only["connrate"] {
		need = append(need, tool{"wrk", "wrk"}, tool{"nft", "nftables"}, tool{"docker-proxy", "docker.io"})
	}
	var missing []string
	seen := map[string]bool{}
	for _, t := range need {
		if seen[t.cmd] {
			continue
		}
		seen[t.cmd] = true
		if lookTool(t.cmd) == "" {
			missing = append(missing, fmt.Sprintf("%s (package %s)", t.cmd, t.pkg))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing tools: %s; `make deps-bench` installs them", strings.Join(missing, ", "))
	}
	return nil
}

// lookTool finds cmd in PATH or the sbin directories a non-login root shell
// may lack (docker-proxy lives in /usr/sbin).
func lookTool(cmd string) string {
	if p, err := exec.LookPath(cmd); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/usr/libexec/docker"} {
		p := filepath.Join(d, cmd)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

func printHeader(o options) {
	var u unix.Utsname
	kernel := "?"
	if unix.Uname(&u) == nil {
		kernel = unix.ByteSliceToString(u.Release[:])
	}
	version := "unavailable"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, filepath.Join(o.bin, "fabricd"), "--version").Output(); err == nil {
		version = strings.TrimSpace(string(out))
	} else {
		version = fmt.Sprintf("unavailable (%s: %v)", filepath.Join(o.bin, "fabricd"), err)
	}
	fmt.Printf("# fabricbench\n\n")
	fmt.Printf("- date: %s\n", time.Now().Format(time.RFC3339))
	fmt.Printf("- kernel: %s, CPUs: %d, %s/%s\n", kernel, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH)
	fmt.Printf("- fabric: %s\n", version)
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		var load float64
		if len(f) > 0 {
			fmt.Sscanf(f[0], "%g", &load)
		}
		warn := ""
		if load > 0.5*float64(runtime.NumCPU()) {
			warn = " — the machine is busy; other work skews these numbers"
		}
		fmt.Printf("- load average at start: %s%s\n", strings.Join(f[:min(3, len(f))], " "), warn)
	}
	fmt.Printf("- %d s per measurement; every figure is the median of %d alternating repetitions "+
		"(rep 1 of each row, then rep 2 of each row, …); ratios compare rows of this run only.\n\n", o.secs, o.reps)
}
