package e2e

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// Two hosts, each with its own fabricd and dockerd (and its own
// /run/docker/plugins), joined by an underlay bridge in a namespace of its
// own. An overlay network made through one host's Docker is the same
// network on the other (whose Docker adopts it with the same command), and
// containers on the two hosts reach each other.
func TestDockerOverlayAcrossHosts(t *testing.T) {
	requireDocker(t)
	onDatapaths(t, testDockerOverlayAcrossHosts)
}

func testDockerOverlayAcrossHosts(t *testing.T, dp string) {
	ul, _ := netnstest.New(t, "du")
	run(t, "ip", "-n", ul, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", ul, "link", "set", "br0", "up")
	plug := func(i int) func(d *dockerHost) {
		return func(d *dockerHost) {
			peer := fmt.Sprintf("p%d", i)
			run(t, "ip", "link", "add", "ul0", "netns", d.ns, "type", "veth", "peer", "name", peer, "netns", ul)
			run(t, "ip", "-n", ul, "link", "set", peer, "master", "br0", "up")
			run(t, "ip", "-n", d.ns, "addr", "add", fmt.Sprintf("198.51.100.%d/24", i), "dev", "ul0")
			run(t, "ip", "-n", d.ns, "link", "set", "ul0", "up")
		}
	}
	a := newDockerHostWith(t, plug(1), "--cluster-bind", "198.51.100.1:7946", "--cluster-insecure", "--uplink", "ul0", "--datapath", dp)
	b := newDockerHostWith(t, plug(2), "--cluster-bind", "198.51.100.2:7946", "--cluster-join", "198.51.100.1:7946",
		"--cluster-insecure", "--uplink", "ul0", "--datapath", dp)
	ov := a.name("ov")
	create := []string{"network", "create", "-d", "fabric", "--ipam-driver", "fabric", "--subnet", "10.80.0.0/16", "-o", "fabric.driver=overlay", ov}
	a.mustDocker(create...)
	for _, h := range []*dockerHost{a, b} {
		mustWait(t, 20*time.Second, "overlay "+ov+" on "+h.ns, func() bool {
			_, _, code := h.ctl("network", "inspect", ov)
			return code == 0
		})
	}
	// Docker names a network only after the plugin made it: a Docker
	// network fabric cannot back (here: a second name for the overlay's
	// subnet) is refused on first use, with fabric's reason.
	b.mustDocker("network", "create", "-d", "fabric", "--ipam-driver", "fabric", "--subnet", "10.80.0.0/16", ov+"x")
	b.dockerFails("overlaps network", "run", "--rm", "--network", ov+"x", "bb", "true")
	b.mustDocker("network", "rm", ov+"x")
	// The second host's Docker adopts the overlay with the same command.
	b.mustDocker(create...)
	b.mustDocker("run", "-d", "--name", "c2", "--network", ov, "bb", "sleep", "600")
	a.mustDocker("run", "-d", "--name", "c1", "--network", ov, "bb", "sleep", "600")
	a.waitDockerSandboxes(1, 1)
	b.waitDockerSandboxes(1, 1)
	ip1, ip2 := a.containerIP("c1", ov), b.containerIP("c2", ov)
	if ip1 == ip2 || ip1 == "" {
		t.Fatalf("containers on two hosts got addresses %q and %q", ip1, ip2)
	}
	mustWait(t, 20*time.Second, "c1 -> c2 across hosts", func() bool {
		_, _, code := a.docker("exec", "c1", "ping", "-c", "1", "-W", "1", ip2)
		return code == 0
	})
	b.mustDocker("exec", "c2", "ping", "-c", "1", "-W", "2", ip1)
	a.checkFabricResolves(t, ov, "c2", ip2)
	// Inside Docker's containers too, by name and across hosts: Docker's
	// resolver forwards what it does not know to fabric (dockerd --dns).
	a.mustDocker("exec", "c1", "ping", "-c", "1", "-W", "2", "c2")
	b.mustDocker("exec", "c2", "ping", "-c", "1", "-W", "2", "c1")

	// The host that made the overlay lets go of it while the other still
	// uses it: Docker's network goes there, the overlay stays for host b
	// and is removed once nobody uses it.
	a.mustDocker("rm", "-f", "c1")
	a.waitDockerSandboxes(0, 0)
	a.mustDocker("network", "rm", ov)
	b.waitDockerSandboxes(1, 1)
	for _, h := range []*dockerHost{a, b} {
		if _, _, code := h.ctl("network", "inspect", ov); code != 0 {
			t.Fatalf("the overlay went away on %s while host b's container is on it", h.ns)
		}
	}
	b.mustDocker("rm", "-f", "c2")
	b.mustDocker("network", "rm", ov)
	mustWait(t, 30*time.Second, "the overlay to go on both hosts once unused", func() bool {
		_, _, codeA := a.ctl("network", "inspect", ov)
		_, _, codeB := b.ctl("network", "inspect", ov)
		return codeA != 0 && codeB != 0
	})
}

// checkFabricResolves: fabric's DNS on d knows a container of another
// host by its Docker name (at ip): asked from a fabric sandbox on ov (its
// namespace lives in the agent's mount namespace).
func (d *dockerHost) checkFabricResolves(t *testing.T, ov, name, ip string) {
	t.Helper()
	q := d.name("q")
	d.mustCtl("run", "-d", "--name", q, "--network", ov, "--", "sleep", "120")
	qns := d.sandbox(q).NetNS
	var last string
	mustWait(t, 10*time.Second, name+"'s name on "+d.ns, func() bool {
		out, err := exec.Command("nsenter", "--mount="+d.mntPath, "nsenter", "--net="+qns, "busybox", "nslookup", name, "127.0.0.11").CombinedOutput()
		last = fmt.Sprintf("%v: %s", err, out)
		return err == nil && strings.Contains(string(out), ip)
	}, func() string { return last })
	d.mustCtl("sandbox", "rm", q)
}
