package e2e

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// nerdctl runs nerdctl against the test's containerd, with fabric-cni's
// configuration and its own data root (its OCI hook, which runs the CNI
// plugins, gets the same flags).
func (k *containerdHost) nerdctl(t *testing.T, netDir, binDir string, args ...string) (string, error) {
	t.Helper()
	base := []string{"--net=" + k.nsPath, "nerdctl", "--address", k.sock, "--namespace", "fabric-test",
		"--cni-path", binDir, "--cni-netconfpath", netDir, "--data-root", filepath.Join(k.dir, "nerdctl")}
	cmd := exec.Command("nsenter", append(base, args...)...)
	return toolOutput(cmd, "nerdctl", args)
}

// toolOutput runs cmd, a container tool named tool given args, and
// returns its trimmed output; its error names the call and carries what
// the tool printed, stderr included.
func toolOutput(cmd *exec.Cmd, tool string, args []string) (string, error) {
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s%s", tool, strings.Join(args, " "), err, out, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

// TestCNINerdctl: `nerdctl run -p` on a fabric network (nerdctl's OCI hook
// calls the plugin with /proc/PID/ns/net, and DEL with an empty netns):
// the published port answers from outside and `nerdctl rm` leaves nothing.
func TestCNINerdctl(t *testing.T) {
	needTools(t, "nerdctl", "containerd", "ctr", "crictl", "runc", "containerd-shim-runc-v2")
	c := newCNIHost(t)
	k := newContainerd(t, c)
	netDir, bin := filepath.Join(k.dir, "nerdctl-net.d"), cniBinDir(t)
	c.writeConflist(t, netDir, "1.0.0")
	t.Cleanup(func() { _, _ = k.nerdctl(t, netDir, bin, "rm", "-f", "-a") })
	if out, err := k.nerdctl(t, netDir, bin, "load", "-i", tinyImage(t, tinyRef)); err != nil {
		t.Fatalf("nerdctl load: %v %s", err, out)
	}
	name, hostPort := c.name("web"), 18600
	id, err := k.nerdctl(t, netDir, bin, "run", "-d", "--name", name, "--hostname", name, "--network", c.network,
		"-p", fmt.Sprintf("%d:80", hostPort), tinyRef, "serve", "80")
	if err != nil {
		t.Fatal(err)
	}
	// nerdctl's CNI container ID is NAMESPACE-ID.
	sbs := c.cniSandboxes(t)
	if len(sbs) != 1 || sbs[0].ContainerID != "fabric-test-"+id || !strings.HasPrefix(sbs[0].Origin, "/proc/") {
		t.Fatalf("CNI sandboxes %+v: want one for container %s, attached by /proc/PID/ns/net", sbs, id)
	}
	var insp []struct {
		State struct {
			Pid int `json:"Pid"`
		} `json:"State"`
	}
	out, err := k.nerdctl(t, netDir, bin, "inspect", id)
	if err != nil || json.Unmarshal([]byte(out), &insp) != nil || len(insp) != 1 {
		t.Fatalf("nerdctl inspect: %v %s", err, out)
	}
	c.waitListening(fmt.Sprintf("/proc/%d/ns/net", insp[0].State.Pid), 80)
	if out := c.mustConnect(c.outside, "tcp", hostUplinkIP+":"+itoa(hostPort)); !strings.HasPrefix(out, name+" ") {
		t.Errorf("published port %d from outside: %q", hostPort, out)
	}
	if out, err := k.nerdctl(t, netDir, bin, "rm", "-f", id); err != nil {
		t.Fatalf("nerdctl rm: %v %s", err, out)
	}
	c.waitNoCNISandbox(t, 20*time.Second)
	if _, err := c.connect(c.outside, "tcp", hostUplinkIP+":"+itoa(hostPort)); err == nil {
		t.Errorf("port %d still answers after the container is gone", hostPort)
	}
}
