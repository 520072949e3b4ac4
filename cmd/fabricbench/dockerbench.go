package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// The docker section: real Docker (dockerd from docker.io) on two hosts of
// their own, both joined to h2. On "db" Docker uses its own bridge driver
// with iptables and docker-proxy (the reference); on "df" Docker uses
// fabric through fabricd's plugin. Each dockerd (and df's fabricd) runs in
// a mount namespace of its own, with a private /run/docker/plugins.
// Traffic tools run in the containers' network namespaces (nsenter), so
// the image needs nothing but a busybox to hold the namespace.

// The links to h2 need subnets of their own: a full run keeps k1's link
// (192.168.251.0/24, kernelhost.go) in h2 while this section runs, and
// with db on that subnet too h2 sent db's traffic to k1, where nothing
// listens on Docker's published ports ("connection refused" for Docker's
// DNAT rows; -only docker, without k1, worked).
const (
	dbIP, dbPeer = "192.168.253.1", "192.168.253.2"
	dfIP, dfPeer = "192.168.254.1", "192.168.254.2"
	dPortPerf    = 8080 // -p 8080:5201 on c2
	dPortHTTP    = 8081 // -p 8081:8000 on c2
)

// dockerBenchHost is one Docker host of the section.
type dockerBenchHost struct {
	short, ip, peer string
	fabric          bool
	mntPath         string
	sock            string
	net, net2       string // Docker networks: the measured one and a second for connect
	subnet          string // first three octets of net's subnet
	c1NS, c2NS      string // containers' network namespaces (/proc/PID/ns/net)
	agent           *proc  // df's fabricd
}

func (d *dockerBenchHost) docker(ctx context.Context, args ...string) (string, error) {
	return runCmd(ctx, 90*time.Second, "docker", append([]string{"-H", "unix://" + d.sock}, args...)...)
}

func (l *Lab) sectionDocker(ctx context.Context) error {
	db := &dockerBenchHost{short: "db", ip: dbIP, peer: dbPeer, net: "bnet", net2: "bnet2", subnet: "10.88.0"}
	df := &dockerBenchHost{short: "df", ip: dfIP, peer: dfPeer, fabric: true, net: "fnet", net2: "fnet2", subnet: "10.89.0"}
	for _, d := range []*dockerBenchHost{db, df} {
		if err := l.setupDockerHost(ctx, d); err != nil {
			return fmt.Errorf("docker host %s: %w", d.short, err)
		}
	}
	h2 := l.nsPath("h2")
	res := runAlternating(ctx, "docker c↔c", l.secs(), l.o.reps, []spec{
		{name: "docker bridge c1 → c2 (ref)", fn: l.throughputLatency(db.c1NS, db.subnet+".11")},
		{name: "fabric c1 → c2", fn: l.throughputLatency(df.c1NS, df.subnet+".11")},
	})
	if ctx.Err() != nil {
		return ctx.Err()
	}
	printTable(fmt.Sprintf("docker: container ↔ container on one host, iperf3 and sockperf, %d s, median of %d", l.secs(), l.o.reps),
		[]column{valCol("Gbit/s", "gbps", "%.2f"), ratioCol("× Docker bridge", "gbps", res[0]),
			valCol("p50 µs", "p50", "%.1f"), ratioCol("p50 × Docker bridge", "p50", res[0])}, res,
		"target: fabric ≥ 0.97× Docker's bridge driver.")

	pub := runAlternating(ctx, "docker published", l.secs(), l.o.reps, []spec{
		{name: fmt.Sprintf("Docker DNAT, h2 → db:%d (ref)", dPortPerf), fn: l.stream(h2, db.ip, dPortPerf)},
		{name: fmt.Sprintf("fabric, h2 → df:%d", dPortPerf), fn: l.stream(h2, df.ip, dPortPerf)},
		{name: fmt.Sprintf("docker-proxy, db → 127.0.0.1:%d (ref)", dPortPerf), fn: l.stream(l.nsPath("db"), "127.0.0.1", dPortPerf)},
		{name: fmt.Sprintf("fabric, df → 127.0.0.1:%d", dPortPerf), fn: l.stream(l.nsPath("df"), "127.0.0.1", dPortPerf)},
	})
	if ctx.Err() != nil {
		return ctx.Err()
	}
	refOf := map[*result]*result{pub[0]: pub[0], pub[1]: pub[0], pub[2]: pub[2], pub[3]: pub[2]}
	printTable(fmt.Sprintf("docker: one TCP stream to a published port, %d s, median of %d", l.secs(), l.o.reps),
		[]column{valCol("Gbit/s", "gbps", "%.2f"), {"× Docker (same origin)", func(r *result) string {
			return ratioCol("", "gbps", refOf[r]).cell(r)
		}}}, pub, "targets: from outside ≥ 1.0× Docker's DNAT; from 127.0.0.1 ≥ 1.5× docker-proxy.")

	rate := func(ip string) func(context.Context, int) (map[string]float64, error) {
		return func(ctx context.Context, secs int) (map[string]float64, error) {
			r, err := l.wrk(ctx, h2, fmt.Sprintf("http://%s:%d/", ip, dPortHTTP), secs)
			if err != nil {
				return nil, err
			}
			return map[string]float64{"rps": r.rps}, nil
		}
	}
	conn := runAlternating(ctx, "docker connrate", l.secs(), l.o.reps, []spec{
		{name: fmt.Sprintf("Docker DNAT, h2 → db:%d (ref)", dPortHTTP), fn: rate(db.ip)},
		{name: fmt.Sprintf("fabric, h2 → df:%d", dPortHTTP), fn: rate(df.ip)},
	})
	if ctx.Err() != nil {
		return ctx.Err()
	}
	printTable(fmt.Sprintf("docker: new connections/s through a published port (wrk, one request per connection), %d s, median of %d", l.secs(), l.o.reps),
		[]column{valCol("conn/s", "rps", "%.0f"), ratioCol("× Docker", "rps", conn[0])}, conn,
		"target: fabric ≥ 1.0× Docker's.")
	return l.dockerSetupTimes(ctx, db, df)
}

// dockerSetupTimes measures, alternating between the hosts, `docker run -d`
// until the container answers ping from its host, and `docker network
// connect` (the command's duration).
func (l *Lab) dockerSetupTimes(ctx context.Context, hosts ...*dockerBenchHost) error {
	n := min(l.o.setupN, 20)
	rows := make([]*result, len(hosts))
	pingers := make([]*pinger, len(hosts))
	for i, d := range hosts {
		rows[i] = &result{spec: spec{name: map[bool]string{false: "Docker bridge (ref)", true: "fabric"}[d.fabric]}, vals: map[string][]float64{}}
		p, err := newPinger(l.nsPath(d.short))
		if err != nil {
			return err
		}
		defer p.close()
		pingers[i] = p
	}
	for k := 0; k < n && ctx.Err() == nil; k++ {
		for i, d := range hosts {
			name := fmt.Sprintf("s%d", k)
			ip := netip.MustParseAddr(fmt.Sprintf("%s.%d", d.subnet, 100+k))
			t0 := time.Now()
			if _, err := d.docker(ctx, "run", "-d", "--name", name, "--network", d.net, "--ip", ip.String(), "bb", "sleep", "3600"); err != nil {
				return err
			}
			at, err := pingers[i].waitReply(ctx, ip)
			if err != nil {
				return fmt.Errorf("%s on %s: %w", name, d.short, err)
			}
			rows[i].vals["run"] = append(rows[i].vals["run"], ms(at.Sub(t0)))
			t0 = time.Now()
			if _, err := d.docker(ctx, "network", "connect", d.net2, name); err != nil {
				return err
			}
			rows[i].vals["connect"] = append(rows[i].vals["connect"], ms(time.Since(t0)))
			rows[i].runs++
		}
	}
	printTable(fmt.Sprintf("docker: set-up times, %d containers per host, alternating (p50 = median)", n),
		[]column{valCol("run -d → ping p50 ms", "run", "%.0f"), ratioCol("× Docker", "run", rows[0]),
			valCol("network connect p50 ms", "connect", "%.0f"), ratioCol("× Docker", "connect", rows[0])}, rows,
		"target: run → reachable p50 no slower than Docker's bridge. DESIGN.md (another run): `docker network connect` p50 84 ms.")
	return nil
}

// setupDockerHost makes host namespace d.short joined to h2, a mount
// namespace, (on df) fabricd with the plugin, dockerd, the busybox image,
// two networks and the containers c1 and c2 (c2 publishing iperf3 and
// HTTP) with the benchmark's servers in c2's namespace.
func (l *Lab) setupDockerHost(ctx context.Context, d *dockerBenchHost) error {
	if err := l.addNS(d.short); err != nil {
		return err
	}
	ns, h2 := l.ns(d.short), l.ns("h2")
	if err := l.subnetFreeOnH2(ctx, d.peer+"/24"); err != nil {
		return err
	}
	for _, s := range [][]string{
		{"link", "add", "ud", "netns", ns, "type", "veth", "peer", "name", "u" + d.short, "netns", h2},
		{"-n", ns, "addr", "add", d.ip + "/24", "dev", "ud"},
		{"-n", ns, "link", "set", "ud", "up"},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", h2, "addr", "add", d.peer + "/24", "dev", "u" + d.short},
		{"-n", h2, "link", "set", "u" + d.short, "up"},
	} {
		if _, err := runCmd(ctx, 10*time.Second, "ip", s...); err != nil {
			return err
		}
	}
	for _, kv := range []string{"net.ipv4.ip_forward=1", "net.ipv4.ping_group_range=0 2147483647", "net.ipv4.ip_local_port_range=1024 65535"} {
		if err := l.sysctl(ctx, l.nsPath(d.short), kv); err != nil {
			return err
		}
	}
	if err := l.holdMountNS(ctx, d); err != nil {
		return err
	}
	d.sock = filepath.Join(l.dir, d.short+"-docker.sock")
	if d.fabric {
		if err := l.startDockerFabric(ctx, d); err != nil {
			return err
		}
	}
	if err := l.startDockerd(ctx, d); err != nil {
		return err
	}
	return l.dockerContainers(ctx, d)
}

// holdMountNS starts a process holding a mount namespace with a private
// tmpfs on /run/docker/plugins.
func (l *Lab) holdMountNS(ctx context.Context, d *dockerBenchHost) error {
	if err := os.MkdirAll("/run/docker/plugins", 0o755); err != nil {
		return err
	}
	p, err := l.startProc(ctx, "mnt-"+d.short, nil, "unshare", "-m", "--propagation", "private", "sh", "-c",
		"mount -t tmpfs fabricbench /run/docker/plugins && echo ready && exec sleep 14400")
	if err != nil {
		return err
	}
	for i := 0; i < 100; i++ {
		if b, _ := os.ReadFile(p.log); strings.Contains(string(b), "ready") {
			d.mntPath = fmt.Sprintf("/proc/%d/ns/mnt", p.cmd.Process.Pid)
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("mount namespace for %s not ready%s", d.short, p.tail())
}

// startDockerFabric runs fabricd with the Docker plugin in d's namespaces.
func (l *Lab) startDockerFabric(ctx context.Context, d *dockerBenchHost) error {
	cfg := filepath.Join(l.dir, "fabric.yaml")
	if err := os.WriteFile(cfg, nil, 0o644); err != nil {
		return err
	}
	socket := filepath.Join(l.dir, d.short+"-fabricd.sock")
	args := append([]string{"nsenter", "--net=" + l.nsPath(d.short), "--mount=" + d.mntPath, filepath.Join(l.o.bin, "fabricd"),
		"--state-dir", filepath.Join(l.dir, d.short+"-state"), "--socket", socket, "--bpf-root", l.bpfRoot(d.short),
		"--node-name", l.ns(d.short), "--config", cfg, "--uplink", "ud", "--metrics-listen", "",
		"--docker-plugin", "/run/docker/plugins/fabric.sock"}, strings.Fields(l.o.fabricArg)...)
	p, err := l.startProc(ctx, "fabricd-"+d.short, func(c *exec.Cmd) {
		c.Env = append(os.Environ(), "DOCKER_HOST=unix://"+d.sock)
	}, args...)
	if err != nil {
		return err
	}
	d.agent = p
	client := api.NewClient(socket)
	for i := 0; i < 200; i++ {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := client.Status(sctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("fabricd exited at start%s", p.tail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("fabricd on %s not answering%s", d.short, p.tail())
}

// startDockerd runs dockerd in d's namespaces: with iptables and
// docker-proxy on db, without on df (fabric publishes ports there).
func (l *Lab) startDockerd(ctx context.Context, d *dockerBenchHost) error {
	iptables := "--iptables=" + map[bool]string{false: "true", true: "false"}[d.fabric]
	p, err := l.startProc(ctx, "dockerd-"+d.short, nil, "nsenter", "--net="+l.nsPath(d.short), "--mount="+d.mntPath,
		"dockerd", "--storage-driver", "vfs", "--bridge", "none", iptables, "--ip6tables=false",
		"--data-root", filepath.Join(l.dir, d.short+"-data"), "--exec-root", filepath.Join(l.dir, d.short+"-exec"),
		"-H", "unix://"+d.sock, "--pidfile", filepath.Join(l.dir, d.short+"-dockerd.pid"),
		"--containerd-namespace", l.ns(d.short), "--containerd-plugins-namespace", l.ns(d.short)+"p")
	if err != nil {
		return err
	}
	l.atCleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if ids, err := d.docker(cctx, "ps", "-aq"); err == nil && strings.TrimSpace(ids) != "" {
			_, _ = d.docker(cctx, append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
		}
		p.stop(10 * time.Second)
		if d.agent != nil {
			d.agent.stop(10 * time.Second)
			_ = os.RemoveAll(l.bpfRoot(d.short)) // after the agent: unpinning detaches its programs
		}
		_ = exec.Command("umount", "-R", "-l", filepath.Join(l.dir, d.short+"-exec")).Run()
		_ = exec.Command("umount", "-R", "-l", filepath.Join(l.dir, d.short+"-data")).Run()
	})
	for i := 0; i < 150; i++ {
		if _, err := d.docker(ctx, "version"); err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("dockerd exited at start%s", p.tail())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("dockerd on %s not answering%s", d.short, p.tail())
}

// dockerContainers imports the image and makes the networks, c1 and c2.
func (l *Lab) dockerContainers(ctx context.Context, d *dockerBenchHost) error {
	root := filepath.Join(l.dir, d.short+"-rootfs")
	for _, dir := range []string{"bin", "etc", "tmp", "proc", "sys", "dev"} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			return err
		}
	}
	if _, err := runCmd(ctx, 10*time.Second, "cp", "/bin/busybox", filepath.Join(root, "bin", "busybox")); err != nil {
		return err
	}
	if err := os.Symlink("busybox", filepath.Join(root, "bin", "sleep")); err != nil {
		return err
	}
	tarPath := root + ".tar"
	if _, err := runCmd(ctx, 30*time.Second, "tar", "-C", root, "-cf", tarPath, "."); err != nil {
		return err
	}
	if _, err := d.docker(ctx, "import", tarPath, "bb"); err != nil {
		return err
	}
	driver := []string{"-d", "bridge"}
	if d.fabric {
		driver = []string{"-d", "fabric", "--ipam-driver", "fabric"}
	}
	for i, name := range []string{d.net, d.net2} {
		// net: SUBNET.0/24; net2: the next /24.
		sub := netip.MustParsePrefix(d.subnet + ".0/24").Addr().As4()
		sub[2] += byte(i)
		args := append(append([]string{"network", "create"}, driver...), "--subnet", netip.PrefixFrom(netip.AddrFrom4(sub), 24).String(), name)
		if _, err := d.docker(ctx, args...); err != nil {
			return err
		}
	}
	for _, c := range []struct {
		name string
		args []string
	}{
		{"c1", []string{"--ip", d.subnet + ".10"}},
		{"c2", []string{"--ip", d.subnet + ".11", "-p", fmt.Sprintf("%d:%d", dPortPerf, portPerf), "-p", fmt.Sprintf("%d:%d", dPortHTTP, portHTTP)}},
	} {
		args := append(append([]string{"run", "-d", "--name", c.name, "--network", d.net}, c.args...), "bb", "sleep", "14400")
		if _, err := d.docker(ctx, args...); err != nil {
			return err
		}
		pid, err := d.docker(ctx, "inspect", "-f", "{{.State.Pid}}", c.name)
		if err != nil {
			return err
		}
		path := "/proc/" + strings.TrimSpace(pid) + "/ns/net"
		if c.name == "c1" {
			d.c1NS = path
		} else {
			d.c2NS = path
		}
	}
	if _, err := l.startIn(ctx, d.short+"-c2-servers", d.c2NS, l.self, serveArg); err != nil {
		return err
	}
	return waitListen(ctx, d.c2NS, 10*time.Second, portPerf, portLat, portHTTP)
}
