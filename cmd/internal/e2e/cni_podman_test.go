package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// podmanHost runs podman (rootful, CNI backend) in a test host's
// namespace with its own storage, run dir and network configuration.
type podmanHost struct {
	*cniHost
	dir string
	env []string
}

func newPodman(t *testing.T, c *cniHost) *podmanHost {
	t.Helper()
	dir, err := os.MkdirTemp("", "fpod")
	must(t, err)
	p := &podmanHost{cniHost: c, dir: dir}
	netDir := filepath.Join(dir, "net.d")
	c.writeConflist(t, netDir, "1.0.0")
	conf := fmt.Sprintf(`[containers]
log_driver = "k8s-file"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
tmp_dir = %q
[network]
network_backend = "cni"
cni_plugin_dirs = [%q]
network_config_dir = %q
`, filepath.Join(dir, "events.log"), filepath.Join(dir, "tmp"), cniBinDir(t), netDir)
	confPath := filepath.Join(dir, "containers.conf")
	must(t, os.WriteFile(confPath, []byte(conf), 0o600))
	p.env = append(os.Environ(), "CONTAINERS_CONF="+confPath)
	t.Cleanup(func() {
		_, _ = p.podmanOut("rm", "-a", "-f", "-t", "0")
		unmountUnder(dir)
		os.RemoveAll(dir)
	})
	if out, err := p.podmanOut("load", "-i", tinyImage(t, tinyRef)); err != nil {
		t.Fatalf("podman load: %v\n%s", err, out)
	}
	return p
}

func (p *podmanHost) podmanOut(args ...string) (string, error) {
	base := []string{"--net=" + p.nsPath, "podman", "--root", filepath.Join(p.dir, "root"), "--runroot", filepath.Join(p.dir, "runroot"),
		"--storage-driver", "vfs", "--tmpdir", filepath.Join(p.dir, "tmp")}
	cmd := exec.Command("nsenter", append(base, args...)...)
	cmd.Env = p.env
	return toolOutput(cmd, "podman", args)
}

// TestCNIPodman runs a container with podman's CNI backend on a fabric
// network: it gets a fabric address, its published port answers from
// outside the host, and removing it leaves nothing behind.
func TestCNIPodman(t *testing.T) {
	needTools(t, "podman", "conmon", "runc")
	c := newCNIHost(t)
	p := newPodman(t, c)
	name, hostPort := c.name("web"), 18500
	// This VM lacks CAP_SYS_RESOURCE: podman's default limits cannot be set.
	id, err := p.podmanOut("run", "-d", "--name", name, "--hostname", name, "--network", c.network,
		"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "-p", itoa(hostPort)+":80",
		tinyRef, "serve", "80") // the image's entrypoint is /pause
	if err != nil {
		t.Fatal(err)
	}
	var insp []struct {
		State struct {
			Pid int `json:"Pid"`
		} `json:"State"`
		NetworkSettings struct {
			Networks map[string]struct {
				IPAddress string `json:"IPAddress"`
			} `json:"Networks"`
		} `json:"NetworkSettings"`
	}
	out, err := p.podmanOut("inspect", id)
	if err != nil || json.Unmarshal([]byte(out), &insp) != nil || len(insp) != 1 {
		t.Fatalf("podman inspect: %v %s", err, out)
	}
	ip := insp[0].NetworkSettings.Networks[c.network].IPAddress
	if !strings.HasPrefix(ip, "10.77.0.") {
		t.Errorf("container address %q, want one of %s", ip, c.subnet)
	}
	sbs := c.cniSandboxes(t)
	if len(sbs) != 1 || sbs[0].ContainerID != id {
		t.Errorf("CNI sandboxes %+v, want one for container %s", sbs, id)
	}
	c.waitListening(fmt.Sprintf("/proc/%d/ns/net", insp[0].State.Pid), 80)
	if out := c.mustConnect(c.outside, "tcp", hostUplinkIP+":"+itoa(hostPort)); !strings.HasPrefix(out, name+" ") {
		t.Errorf("published port %d from outside: %q", hostPort, out)
	}
	if out, err := p.podmanOut("rm", "-f", "-t", "0", id); err != nil {
		t.Fatalf("podman rm: %v %s", err, out)
	}
	c.waitNoCNISandbox(t, 20*time.Second)
	if _, err := c.connect(c.outside, "tcp", hostUplinkIP+":"+itoa(hostPort)); err == nil {
		t.Errorf("port %d still answers after the container is gone", hostPort)
	}
}
