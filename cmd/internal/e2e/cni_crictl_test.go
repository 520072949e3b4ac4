package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// containerdHost is a containerd with its CRI plugin running in a test
// host's namespace, with its own root, state and socket, using fabric-cni
// for pod networks: the kubelet's path to CNI, driven by crictl.
type containerdHost struct {
	*cniHost
	dir  string
	sock string
}

const tinyRef = "fabric.test/tiny:1"

func newContainerd(t *testing.T, c *cniHost) *containerdHost {
	t.Helper()
	dir, err := os.MkdirTemp("", "fctd")
	must(t, err)
	k := &containerdHost{cniHost: c, dir: dir, sock: filepath.Join(dir, "containerd.sock")}
	confDir := filepath.Join(dir, "net.d")
	c.writeConflist(t, confDir, "1.0.0")
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
    max_conf_num = 1
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), k.sock, k.sock+".ttrpc", tinyRef, cniBinDir(t), confDir)
	cfgPath := filepath.Join(dir, "config.toml")
	must(t, os.WriteFile(cfgPath, []byte(cfg), 0o600))
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	must(t, err)
	cmd := exec.Command("nsenter", "--net="+c.nsPath, "containerd", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	must(t, cmd.Start())
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "containerd.log"))
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			t.Logf("containerd log (tail):\n%s", b)
		}
		_, _ = k.crictlOut("rmp", "-a", "-f")
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		unmountUnder(dir)
		os.RemoveAll(dir)
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := k.crictlOut("info"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd's CRI did not answer within 60s")
		}
		time.Sleep(200 * time.Millisecond)
	}
	out, err := exec.Command("ctr", "--address", k.sock, "-n", "k8s.io", "images", "import", tinyImage(t, tinyRef)).CombinedOutput()
	if err != nil {
		t.Fatalf("import the test image: %v\n%s", err, out)
	}
	return k
}

func (k *containerdHost) crictlOut(args ...string) (string, error) {
	ep := "unix://" + k.sock
	cmd := exec.Command("crictl", append([]string{"--runtime-endpoint", ep, "--image-endpoint", ep, "--timeout", "60s"}, args...)...)
	return toolOutput(cmd, "crictl", args)
}

func (k *containerdHost) crictl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := k.crictlOut(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// writeJSON writes v as a file in the runtime's dir and returns its path.
func (k *containerdHost) writeJSON(t *testing.T, name string, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	must(t, err)
	p := filepath.Join(k.dir, name)
	must(t, os.WriteFile(p, b, 0o600))
	return p
}

// runPod starts a pod sandbox (with hostPort → 80 if hostPort > 0) and,
// if serve, a container in it answering on port 80. It returns the pod
// ID, its IP and its network namespace.
func (k *containerdHost) runPod(t *testing.T, name string, hostPort int, serve bool) (id, ip, netnsPath string) {
	t.Helper()
	pod := map[string]any{
		"metadata": map[string]any{"name": name, "namespace": "default", "uid": name + "-uid", "attempt": 0},
		"hostname": name, "log_directory": filepath.Join(k.dir, "logs", name),
		"linux": map[string]any{},
	}
	if hostPort > 0 {
		pod["port_mappings"] = []map[string]any{{"protocol": 0, "container_port": 80, "host_port": hostPort}}
	}
	podCfg := k.writeJSON(t, name+"-pod.json", pod)
	id = k.crictl(t, "runp", podCfg)
	if serve {
		ctr := k.writeJSON(t, name+"-ctr.json", map[string]any{
			"metadata": map[string]any{"name": "srv"}, "image": map[string]any{"image": tinyRef},
			"command": []string{"/pause", "serve", "80"}, "log_path": "srv.log", "linux": map[string]any{},
		})
		cid := k.crictl(t, "create", id, ctr, podCfg)
		k.crictl(t, "start", cid)
	}
	var insp struct {
		Status struct {
			Network struct {
				IP string `json:"ip"`
			} `json:"network"`
		} `json:"status"`
		Info struct {
			RuntimeSpec struct {
				Linux struct {
					Namespaces []struct {
						Type string `json:"type"`
						Path string `json:"path"`
					} `json:"namespaces"`
				} `json:"linux"`
			} `json:"runtimeSpec"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(k.crictl(t, "inspectp", "-o", "json", id)), &insp); err != nil {
		t.Fatalf("inspectp: %v", err)
	}
	for _, ns := range insp.Info.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" {
			netnsPath = ns.Path
		}
	}
	return id, insp.Status.Network.IP, netnsPath
}

// TestCNICrictl runs pods through containerd's CRI (what the kubelet
// calls) with fabric-cni as the pod network: the pods get fabric
// addresses, a hostPort answers from outside the host, a pod reaches the
// other by IP, `sandbox ls` lists both as owned by CNI by pod ID, and
// removing the pods (containerd sends DEL twice, the second with no
// netns) leaves nothing behind.
func TestCNICrictl(t *testing.T) {
	needTools(t, "containerd", "ctr", "crictl", "runc", "containerd-shim-runc-v2")
	c := newCNIHost(t)
	k := newContainerd(t, c)
	hostPort := 18400
	idA, ipA, _ := k.runPod(t, c.name("a"), hostPort, true)
	idB, ipB, nsB := k.runPod(t, c.name("b"), 0, false)
	if !strings.HasPrefix(ipA, "10.77.0.") || !strings.HasPrefix(ipB, "10.77.0.") || nsB == "" {
		t.Fatalf("pod IPs %q %q (netns %q): want addresses of %s", ipA, ipB, nsB, c.subnet)
	}
	owners := map[string]bool{}
	for _, sb := range c.cniSandboxes(t) {
		owners[sb.ContainerID] = true
	}
	if !owners[idA] || !owners[idB] || len(owners) != 2 {
		t.Errorf("CNI sandboxes by container ID %v, want the pods %s and %s", owners, idA, idB)
	}
	c.waitListening(filepath.Join("/proc", podPID(t, k, idA), "ns", "net"), 80)
	if out := c.mustConnect(c.outside, "tcp", hostUplinkIP+":"+itoa(hostPort)); !strings.HasPrefix(out, c.name("a")+" ") {
		t.Errorf("hostPort %d from outside: %q, want pod a's answer", hostPort, out)
	}
	if out := c.mustConnect(filepath.Base(nsB), "tcp", ipA+":80"); !strings.HasPrefix(out, c.name("a")+" "+ipB+":") {
		t.Errorf("pod b → pod a by IP: %q, want pod a's answer seeing %s", out, ipB)
	}
	for _, id := range []string{idA, idB} {
		k.crictl(t, "stopp", id)
		k.crictl(t, "rmp", id)
	}
	c.waitNoCNISandbox(t, 20*time.Second)
	if _, err := c.connect(c.outside, "tcp", hostUplinkIP+":"+itoa(hostPort)); err == nil {
		t.Errorf("hostPort %d still answers after the pod is gone", hostPort)
	}
	if _, err := os.Stat(nsB); !os.IsNotExist(err) {
		t.Errorf("pod b's namespace %s still there: %v", nsB, err)
	}
}

// podPID is the PID of a pod's sandbox (pause) process.
func podPID(t *testing.T, k *containerdHost, id string) string {
	t.Helper()
	var insp struct {
		Info struct {
			PID int `json:"pid"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(k.crictl(t, "inspectp", "-o", "json", id)), &insp); err != nil || insp.Info.PID == 0 {
		t.Fatalf("pod %s has no PID: %v", id, err)
	}
	return itoa(insp.Info.PID)
}
