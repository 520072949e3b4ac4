package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

// defaultRoutes lists the default routes in a container, as `ip route`
// (busybox) prints them.
func (d *dockerHost) defaultRoutes(container string) []string {
	d.t.Helper()
	out := d.mustDocker("exec", container, "ip", "route", "show")
	var defs []string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "default") {
			defs = append(defs, strings.TrimSpace(line))
		}
	}
	return defs
}

// A container on a fabric network joins one of Docker's own bridge
// networks and leaves it again, and the other way round, as with Docker's
// own drivers: Docker is handed fabric's interface (a veth pair fabric
// adopts), so it names the interfaces and keeps one default route among
// the networks itself. Traffic flows on both networks, and after the
// disconnect the default route is fabric's again (egress works).
func TestDockerConnectDockerBridge(t *testing.T) {
	onDatapaths(t, func(t *testing.T, dp string) {
		d := newDockerHost(t, "--datapath", dp)
		fnet, bnet := d.name("fab"), d.name("brg")
		d.mustDocker("network", "create", "-d", "fabric", "--ipam-driver", "fabric", "--subnet", "10.79.0.0/24", fnet)
		// Docker's own bridge driver, with dockerd's --iptables=false.
		d.mustDocker("network", "create", "-d", "bridge", "--subnet", "10.80.0.0/24", bnet)

		d.mustDocker("run", "-d", "--name", "f1", "--network", fnet, "bb", "sleep", "600")
		d.mustDocker("run", "-d", "--name", "f2", "--network", fnet, "bb", "sleep", "600")
		d.mustDocker("run", "-d", "--name", "b1", "--network", bnet, "bb", "sleep", "600")
		d.waitDockerSandboxes(2, 2)
		f2, b1 := d.containerIP("f2", fnet), d.containerIP("b1", bnet)
		d.mustDocker("exec", "f1", "ping", "-c", "1", "-W", "2", f2)
		d.mustDocker("exec", "f1", "ping", "-c", "1", "-W", "2", outsideUplinkIP)
		// Fabric's anti-spoofing holds on the interface Docker put in place.
		nsArg := "--net=/proc/" + d.mustDocker("inspect", "-f", "{{.State.Pid}}", "f1") + "/ns/net"
		run(t, "nsenter", nsArg, "ip", "addr", "add", "10.79.0.99/32", "dev", "eth0")
		if out, err := exec.Command("nsenter", nsArg, "ping", "-c", "1", "-W", "1", "-I", "10.79.0.99", f2).CombinedOutput(); err == nil {
			t.Fatalf("f1 reached f2 from a source address not its own:\n%s", out)
		}
		run(t, "nsenter", nsArg, "ip", "addr", "del", "10.79.0.99/32", "dev", "eth0")

		// Fabric first, then Docker's bridge: traffic on both.
		d.mustDocker("network", "connect", bnet, "f1")
		d.mustDocker("exec", "f1", "ping", "-c", "1", "-W", "2", b1)
		d.mustDocker("exec", "f1", "ping", "-c", "1", "-W", "2", f2)
		if defs := d.defaultRoutes("f1"); len(defs) != 1 {
			t.Fatalf("f1 on both networks has default routes %q, want exactly one (Docker's choice)", defs)
		}
		// And back: Docker's bridge gone, fabric's default route again.
		d.mustDocker("network", "disconnect", bnet, "f1")
		// (b1 stays reachable through the host, which routes between the
		// networks: dockerd runs with --iptables=false, no isolation rules.)
		if addrs := d.mustDocker("exec", "f1", "ip", "-o", "-4", "addr", "show"); strings.Contains(addrs, "10.80.0.") {
			t.Fatalf("f1 still has an address on the bridge network after leaving it:\n%s", addrs)
		}
		d.mustDocker("exec", "f1", "ping", "-c", "1", "-W", "2", f2)
		mustWait(t, 10*time.Second, "f1's egress through fabric after the disconnect", func() bool {
			_, _, code := d.docker("exec", "f1", "ping", "-c", "1", "-W", "1", outsideUplinkIP)
			return code == 0
		}, func() string { return strings.Join(d.defaultRoutes("f1"), "\n") })

		// Docker's bridge first, then fabric (and out again).
		d.mustDocker("network", "connect", fnet, "b1")
		d.waitDockerSandboxes(3, 3)
		d.mustDocker("exec", "b1", "ping", "-c", "1", "-W", "2", f2)
		d.mustDocker("exec", "f2", "ping", "-c", "1", "-W", "2", d.containerIP("b1", fnet))
		d.mustDocker("network", "disconnect", fnet, "b1")
		d.waitDockerSandboxes(2, 2)

		// f1 joins the bridge once more and is removed while on both.
		d.mustDocker("network", "connect", bnet, "f1")
		d.mustDocker("exec", "f1", "ping", "-c", "1", "-W", "2", b1)
		d.mustDocker("rm", "-f", "f1", "f2", "b1")
		mustWait(t, 20*time.Second, "fabric records, links, pins and references to go", func() bool {
			return len(d.dockerSandboxes()) == 0 && len(d.hostLinks()) == 0 && len(d.endpointPins()) == 0 && len(d.heldRefs()) == 0
		}, func() string { return strings.Join(d.hostLinks(), " ") })
		d.mustDocker("network", "rm", fnet, bnet)
	})
}
