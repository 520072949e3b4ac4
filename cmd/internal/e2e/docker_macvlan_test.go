package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// A container on a macvlan network sends what is off its subnet to the
// LAN's gateway, so the names Docker's resolver forwards to fabric
// (169.254.53.53 on the host, dockerd --dns) never reached the host. With
// -o host_shim=true the container has a route there via the shim, and a
// fabric sandbox on the same network resolves by name from inside the
// container. (The name is short: containerd's sockets live under the
// test's temporary directory, and a unix socket path has 107 bytes.)
func TestDockerMacvlanNames(t *testing.T) {
	requireDocker(t)
	onDatapaths(t, func(t *testing.T, dp string) {
		d := newDockerHostWith(t, func(d *dockerHost) {
			// The LAN: a veth pair whose far end nothing answers on
			// (no dummy links on every kernel).
			run(t, "ip", "-n", d.ns, "link", "add", "lan0", "type", "veth", "peer", "name", "lan0far")
			run(t, "ip", "-n", d.ns, "link", "set", "lan0far", "up")
			run(t, "ip", "-n", d.ns, "link", "set", "lan0", "up")
		}, "--datapath", dp)
		lan := d.name("lan")
		d.mustDocker("network", "create", "-d", "fabric", "--ipam-driver", "fabric", "--subnet", "10.81.0.0/24",
			"-o", "fabric.driver=macvlan", "-o", "parent=lan0", "-o", "host_shim=true", lan)
		mustWait(t, 15*time.Second, "fabric network "+lan, func() bool {
			_, _, code := d.ctl("network", "inspect", lan)
			return code == 0
		})
		q := d.name("q")
		d.mustCtl("run", "-d", "--name", q, "--network", lan, "--", "sleep", "300")
		d.mustDocker("run", "-d", "--name", "c1", "--network", lan, "bb", "sleep", "300")
		d.waitDockerSandboxes(1, 1)
		qIP := strings.TrimSuffix(d.sandbox(q).Endpoints[0].IP, "/24")
		var last string
		mustWait(t, 20*time.Second, q+"'s name from the macvlan container", func() bool {
			out, errOut, code := d.docker("exec", "c1", "nslookup", q)
			last = fmt.Sprintf("exit %d: %s %s", code, out, errOut)
			return code == 0 && strings.Contains(out, qIP)
		}, func() string { return last })
		d.mustDocker("rm", "-f", "c1")
		d.mustCtl("sandbox", "rm", q)
		d.mustDocker("network", "rm", lan)
	})
}
