package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// hostLinks lists the fabric endpoint links in the host namespace: fv…
// (made by fabric) and fdh…/fdc… (veth pairs handed to Docker in Join).
func (d *dockerHost) hostLinks() []string {
	out, err := exec.Command("ip", "-n", d.ns, "-o", "link", "show").Output()
	if err != nil {
		d.t.Fatalf("ip link: %v", err)
	}
	var links []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && (strings.HasPrefix(f[1], "fv") || strings.HasPrefix(f[1], "fdh") || strings.HasPrefix(f[1], "fdc")) {
			links = append(links, strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":"))
		}
	}
	return links
}

// endpointPins lists the eBPF datapath's per-endpoint link pins.
func (d *dockerHost) endpointPins() []string {
	m, _ := filepath.Glob(filepath.Join(d.bpfRoot, "links", "ep-*"))
	return m
}

// heldRefs lists the namespace references the agent holds.
func (d *dockerHost) heldRefs() []string {
	m, _ := filepath.Glob(filepath.Join(d.dir, "state", "netns", "*"))
	return m
}

// waitDockerSandboxes waits until fabric shows n sandboxes owned by Docker
// whose endpoints number eps in total.
func (d *dockerHost) waitDockerSandboxes(n, eps int) []api.Sandbox {
	d.t.Helper()
	var sbs []api.Sandbox
	mustWait(d.t, 20*time.Second, "fabric to show the Docker containers", func() bool {
		sbs = d.dockerSandboxes()
		total := 0
		for _, sb := range sbs {
			total += len(sb.Endpoints)
		}
		return len(sbs) == n && total == eps
	})
	return sbs
}

// httpGet fetches url from a namespace with curl.
func httpGet(ns, url string) (string, error) {
	out, err := netnstest.Cmd(ns, "curl", "-s", "-m", "3", url).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func TestDockerSingleHost(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("needs curl")
	}
	onDatapaths(t, func(t *testing.T, dp string) {
		d := newDockerHost(t, "--datapath", dp)
		net, internal := d.name("web"), d.name("int")
		d.mustDocker("network", "create", "-d", "fabric", "--ipam-driver", "fabric", "--subnet", "10.77.0.0/24", net)
		mustWait(t, 15*time.Second, "fabric network "+net, func() bool {
			_, _, code := d.ctl("network", "inspect", net)
			return code == 0
		})

		// Bad input: Docker shows fabric's error and nothing is left.
		d.dockerFails("unknown option -o foo", "network", "create", "-d", "fabric", "--ipam-driver", "fabric", "-o", "foo=bar", d.name("bad1"))
		d.dockerFails("overlaps network", "network", "create", "-d", "fabric", "--ipam-driver", "fabric", "--subnet", "10.77.0.128/25", d.name("bad2"))
		d.dockerFails("--ipam-driver fabric", "network", "create", "-d", "fabric", d.name("bad3"))

		d.startWebContainers(t, net)
		d.checkDockerTraffic(t, net)
		d.checkInternalNetwork(t, internal)
		d.checkConcurrentRuns(t, net)
		d.checkDockerCleanup(t, net, internal)
	})
}

// startWebContainers runs c1 and c2 (static 10.77.0.50, alias www, an
// HTTP server published on 8080) on net and checks that fabric knows them
// by Docker's ID, name and aliases, with the addresses Docker gave.
func (d *dockerHost) startWebContainers(t *testing.T, net string) {
	t.Helper()
	d.mustDocker("run", "-d", "--name", "c1", "--network", net, "bb", "sleep", "600")
	d.mustDocker("run", "-d", "--name", "c2", "--network", net, "--network-alias", "www", "--ip", "10.77.0.50",
		"-p", "8080:80", "bb", "sh", "-c", "echo hello-docker > /www/index.html && exec httpd -f -p 80 -h /www")
	sbs := d.waitDockerSandboxes(2, 2)
	for _, sb := range sbs {
		if sb.Mode != api.ModeExternal || sb.ContainerID == "" {
			t.Fatalf("sandbox %s: mode %s, container %q; want an external sandbox with Docker's ID", sb.Name, sb.Mode, sb.ContainerID)
		}
	}
	// Fabric knows the containers by Docker's ID, name and aliases.
	id2 := d.mustDocker("inspect", "-f", "{{.Id}}", "c2")
	mustWait(t, 10*time.Second, "c2's names in fabric", func() bool {
		for _, sb := range d.dockerSandboxes() {
			if sb.ContainerID == id2 && len(sb.Endpoints) == 1 && slices.Contains(sb.Endpoints[0].Aliases, "c2") &&
				slices.Contains(sb.Endpoints[0].Aliases, "www") {
				return true
			}
		}
		return false
	})
	if got := d.containerIP("c2", net); got != "10.77.0.50" {
		t.Fatalf("c2 has %q on %s, want the static 10.77.0.50", got, net)
	}
	ip1 := d.containerIP("c1", net)
	// Fabric's endpoint has the address Docker's IPAM call gave.
	found := false
	for _, sb := range sbs {
		for _, ep := range sb.Endpoints {
			found = found || ep.IP == ip1+"/24"
		}
	}
	if !found {
		t.Fatalf("no fabric endpoint with c1's Docker address %s: %+v", ip1, sbs)
	}
}

// checkDockerTraffic: names (Docker's resolver), aliases and traffic
// between containers on net; the published port from outside and from the
// host's 127.0.0.1; egress; and refused runs that leave nothing.
func (d *dockerHost) checkDockerTraffic(t *testing.T, net string) {
	t.Helper()
	d.mustDocker("exec", "c1", "ping", "-c", "1", "-W", "2", "c2")
	d.mustDocker("exec", "c1", "ping", "-c", "1", "-W", "2", "www")
	if out := d.mustDocker("exec", "c1", "wget", "-q", "-O", "-", "http://www/"); out != "hello-docker" {
		t.Fatalf("c1 -> www: %q", out)
	}
	// -p from outside, from the host's own 127.0.0.1, and egress.
	mustWait(t, 10*time.Second, "published port from outside", func() bool {
		out, err := httpGet(d.outside, "http://"+hostUplinkIP+":8080/")
		return err == nil && out == "hello-docker"
	})
	if out, err := httpGet(d.ns, "http://127.0.0.1:8080/"); err != nil || out != "hello-docker" {
		t.Fatalf("published port from the host's 127.0.0.1: %q, %v", out, err)
	}
	d.mustDocker("exec", "c1", "ping", "-c", "1", "-W", "2", outsideUplinkIP)
	// A port already published is refused with fabric's reason.
	nBefore := len(d.hostLinks())
	d.dockerFails("already published", "run", "--rm", "--network", net, "-p", "8080:80", "bb", "true")
	d.dockerFails("already assigned", "run", "--rm", "--network", net, "--ip", "10.77.0.50", "bb", "true")
	d.dockerFails("", "run", "--rm", "--network", net, "--ip", "10.99.0.5", "bb", "true")
	if n := len(d.hostLinks()); n != nBefore || len(d.dockerSandboxes()) != 2 {
		t.Fatalf("a refused run left something: %d links (was %d), %d sandboxes", n, nBefore, len(d.dockerSandboxes()))
	}
}

// checkInternalNetwork: a container on the --internal network internal has
// no egress; c1 reaches it while connected to internal, not after.
func (d *dockerHost) checkInternalNetwork(t *testing.T, internal string) {
	t.Helper()
	d.mustDocker("network", "create", "-d", "fabric", "--ipam-driver", "fabric", "--internal", internal)
	d.mustDocker("run", "-d", "--name", "c3", "--network", internal, "bb", "sleep", "600")
	d.waitDockerSandboxes(3, 3)
	if _, _, code := d.docker("exec", "c3", "ping", "-c", "1", "-W", "1", outsideUplinkIP); code == 0 {
		t.Fatal("a container on an --internal network reached the outside")
	}
	ip3 := d.containerIP("c3", internal)
	d.mustDocker("network", "connect", internal, "c1")
	d.waitDockerSandboxes(3, 4)
	d.mustDocker("exec", "c1", "ping", "-c", "1", "-W", "2", ip3)
	d.mustDocker("network", "disconnect", internal, "c1")
	d.waitDockerSandboxes(3, 3)
	if _, _, code := d.docker("exec", "c1", "ping", "-c", "1", "-W", "1", ip3); code == 0 {
		t.Fatal("c1 still reaches c3 after network disconnect")
	}
}

// checkConcurrentRuns: containers started at the same time on net get
// distinct addresses (an address handed to Docker is held until it is
// connected).
func (d *dockerHost) checkConcurrentRuns(t *testing.T, net string) {
	t.Helper()
	errs := make(chan string, 4)
	for i := range 4 {
		go func() {
			_, e, code := d.docker("run", "-d", "--name", fmt.Sprintf("p%d", i), "--network", net, "bb", "sleep", "600")
			if code != 0 {
				errs <- e
				return
			}
			errs <- ""
		}()
	}
	for range 4 {
		if e := <-errs; e != "" {
			t.Fatalf("concurrent docker run: %s", e)
		}
	}
	d.waitDockerSandboxes(7, 7)
	seen := map[string]bool{}
	for _, sb := range d.dockerSandboxes() {
		for _, ep := range sb.Endpoints {
			if seen[ep.IP] {
				t.Fatalf("address %s given twice", ep.IP)
			}
			seen[ep.IP] = true
		}
	}
}

// checkDockerCleanup: rm and network rm leave nothing in fabric or the
// kernel.
func (d *dockerHost) checkDockerCleanup(t *testing.T, net, internal string) {
	t.Helper()
	d.mustDocker("rm", "-f", "c1", "c2", "c3", "p0", "p1", "p2", "p3")
	mustWait(t, 20*time.Second, "fabric records, links, pins and references to go", func() bool {
		return len(d.dockerSandboxes()) == 0 && len(d.hostLinks()) == 0 && len(d.endpointPins()) == 0 && len(d.heldRefs()) == 0
	})
	d.mustDocker("network", "rm", net, internal)
	if _, _, code := d.ctl("network", "inspect", net); code == 0 {
		t.Fatalf("fabric network %s outlived its Docker network", net)
	}
	b, err := os.ReadFile(filepath.Join(d.dir, "state", "docker-plugin.json"))
	if err != nil || strings.Contains(string(b), net) {
		t.Fatalf("plugin state still knows the removed network: %v\n%s", err, b)
	}
}

// Docker's containers keep their traffic while fabricd is killed and while
// dockerd restarts (live-restore); both come back to the same state and
// go on handling Docker's calls (Docker never replays CreateNetwork).
func TestDockerRestarts(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("needs curl")
	}
	onDatapaths(t, testDockerRestarts)
}

func testDockerRestarts(t *testing.T, dp string) {
	d := newDockerHost(t, "--datapath", dp)
	net := d.name("web")
	d.mustDocker("network", "create", "-d", "fabric", "--ipam-driver", "fabric", "--subnet", "10.78.0.0/24", net)
	d.mustDocker("run", "-d", "--name", "c1", "--network", net, "bb", "sleep", "600")
	d.mustDocker("run", "-d", "--name", "c2", "--network", net, "-p", "8080:80", "bb",
		"sh", "-c", "echo hello-docker > /www/index.html && exec httpd -f -p 80 -h /www")
	before := d.waitDockerSandboxes(2, 2)
	ip2 := d.containerIP("c2", net)
	d.mustDocker("exec", "c1", "ping", "-c", "1", "-W", "2", ip2)
	// 300 pings over 30 s, across both restarts.
	d.mustDocker("exec", "-d", "c1", "sh", "-c", "ping -c 300 -i 0.1 -W 1 "+ip2+" > /tmp/ping.log 2>&1")

	d.kill9()
	if out, err := httpGet(d.outside, "http://"+hostUplinkIP+":8080/"); err != nil || out != "hello-docker" {
		t.Fatalf("published port while fabricd is down: %q, %v", out, err)
	}
	d.startAgent()
	after := d.waitDockerSandboxes(2, 2)
	if got, want := sandboxSummary(after), sandboxSummary(before); got != want {
		t.Fatalf("after kill -9 fabricd: sandboxes\n%s\nwant\n%s", got, want)
	}
	// The plugin still knows Docker's network: a new container joins it.
	d.mustDocker("run", "-d", "--name", "c3", "--network", net, "bb", "sleep", "600")
	d.waitDockerSandboxes(3, 3)
	d.mustDocker("exec", "c3", "ping", "-c", "1", "-W", "2", ip2)

	d.stopDockerd()
	if out, err := httpGet(d.outside, "http://"+hostUplinkIP+":8080/"); err != nil || out != "hello-docker" {
		t.Fatalf("published port while dockerd is down: %q, %v", out, err)
	}
	d.startDockerd()
	d.waitDockerSandboxes(3, 3)
	d.mustDocker("exec", "c3", "ping", "-c", "1", "-W", "2", "c2")
	var log string
	mustWait(t, 40*time.Second, "the 300 pings to finish", func() bool {
		log, _, _ = d.docker("exec", "c1", "cat", "/tmp/ping.log")
		return strings.Contains(log, "packets received")
	})
	var sent, got int
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "packets transmitted") {
			_, _ = fmt.Sscanf(line, "%d packets transmitted, %d packets received", &sent, &got)
		}
	}
	if sent != 300 || got < 290 {
		t.Fatalf("c1 -> c2 across the restarts: %d of %d pings answered\n%s", got, sent, tail(log, 500))
	}

	d.checkRestartAlways(t, net)

	// Docker's removals after both restarts still clean up.
	d.mustDocker("rm", "-f", "c1", "c2", "c3", "rs")
	mustWait(t, 20*time.Second, "fabric records, links and references to go", func() bool {
		return len(d.dockerSandboxes()) == 0 && len(d.hostLinks()) == 0 && len(d.heldRefs()) == 0
	})
	d.mustDocker("network", "rm", net)
	if _, _, code := d.ctl("network", "inspect", net); code == 0 {
		t.Fatalf("fabric network %s outlived its Docker network", net)
	}
}

// checkRestartAlways: a container on net with --restart always whose
// process dies comes back with its address and its published port.
func (d *dockerHost) checkRestartAlways(t *testing.T, net string) {
	t.Helper()
	d.mustDocker("run", "-d", "--name", "rs", "--restart", "always", "--network", net, "--ip", "10.78.0.40", "-p", "8082:80", "bb",
		"sh", "-c", "echo again > /www/index.html && exec httpd -f -p 80 -h /www")
	d.waitDockerSandboxes(4, 4)
	pid := d.mustDocker("inspect", "-f", "{{.State.Pid}}", "rs")
	mustWait(t, 10*time.Second, "rs's published port", func() bool {
		out, err := httpGet(d.outside, "http://"+hostUplinkIP+":8082/")
		return err == nil && out == "again"
	})
	run(t, "kill", "-9", pid)
	mustWait(t, 20*time.Second, "rs to be restarted by Docker", func() bool {
		out, _, _ := d.docker("inspect", "-f", "{{.RestartCount}} {{.State.Running}}", "rs")
		return out == "1 true"
	})
	mustWait(t, 10*time.Second, "rs's published port after its restart", func() bool {
		out, err := httpGet(d.outside, "http://"+hostUplinkIP+":8082/")
		return err == nil && out == "again"
	})
	if ip := d.containerIP("rs", net); ip != "10.78.0.40" {
		t.Fatalf("rs came back with %q, want 10.78.0.40", ip)
	}
	d.waitDockerSandboxes(4, 4)
}

// sandboxSummary is what must not change across restarts: names, owners
// and endpoints with their addresses.
func sandboxSummary(sbs []api.Sandbox) string {
	var lines []string
	for _, sb := range sbs {
		line := sb.Name + " " + sb.Owner + " " + sb.ContainerID
		for _, ep := range sb.Endpoints {
			line += " " + ep.Network + "=" + ep.IP + "/" + ep.HostIfName
		}
		for _, p := range sb.Ports {
			line += " " + p.String()
		}
		lines = append(lines, line)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
