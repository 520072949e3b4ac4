package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/testbin"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// A Docker test host is a test host whose fabricd and dockerd share a
// mount namespace of their own: there /run/docker/plugins is a private
// tmpfs (where dockerd finds fabricd's plugin socket, and nobody else's),
// and the namespaces Docker mounts at its sandbox keys are visible to
// fabricd. dockerd runs in the host network namespace with its own data
// and exec roots, no bridge and no iptables, started by nsenter (not ip
// netns exec, whose /sys remount kills dockerd).

type dockerHost struct {
	*host
	mnt      *exec.Cmd // holds the mount namespace
	mntPath  string
	dockerd  *exec.Cmd
	dsock    string
	dataRoot string
	execRoot string
}

const dockerPluginSock = "/run/docker/plugins/fabric.sock"

// requireDocker skips unless Debian's docker.io, containerd and
// busybox-static are installed (make deps-docker).
func requireDocker(t *testing.T) {
	t.Helper()
	netnstest.RequireRoot(t)
	for _, bin := range []string{"/usr/sbin/dockerd", "/usr/bin/docker", "/usr/bin/containerd", "/bin/busybox"} {
		if _, err := os.Stat(bin); err != nil {
			t.Skipf("needs Docker (docker.io, containerd, busybox-static: make deps-docker): %s missing", bin)
		}
	}
}

// newDockerHost makes a host namespace with an outside peer, starts
// fabricd with --docker-plugin and a dockerd using it, and imports a
// busybox image "bb".
func newDockerHost(t *testing.T, extra ...string) *dockerHost {
	t.Helper()
	return newDockerHostWith(t, nil, extra...)
}

// newDockerHostWith is newDockerHost with a step (before) between making
// the namespaces and starting fabricd, e.g. to plug in an underlay.
func newDockerHostWith(t *testing.T, before func(*dockerHost), extra ...string) *dockerHost {
	t.Helper()
	requireDocker(t)
	h := newHostNamespaces(t, "d", "dh", "do", []string{"default"},
		append([]string{"--docker-plugin", dockerPluginSock, "--metrics-listen", ""}, extra...))
	d := &dockerHost{host: h, dsock: filepath.Join(h.dir, "docker.sock"),
		dataRoot: filepath.Join(h.dir, "docker-data"), execRoot: filepath.Join(h.dir, "docker-exec")}
	d.holdMountNS()
	t.Cleanup(d.cleanup)
	if before != nil {
		before(d)
	}
	d.startAgent()
	d.startDockerd()
	d.importBusybox()
	return d
}

// holdMountNS starts a process in a new mount namespace (private
// propagation) with a tmpfs on /run/docker/plugins.
func (d *dockerHost) holdMountNS() {
	t := d.t
	if err := os.MkdirAll("/run/docker/plugins", 0o755); err != nil {
		t.Fatal(err)
	}
	d.mnt = exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c",
		"mount -t tmpfs -o mode=0755 fabric-e2e /run/docker/plugins && echo ready && exec sleep 3600")
	var out bytes.Buffer
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	d.mnt.Stdout, d.mnt.Stderr = pw, &out
	if err := d.mnt.Start(); err != nil {
		t.Fatalf("unshare: %v", err)
	}
	pw.Close()
	buf := make([]byte, 6)
	_ = pr.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, _ := pr.Read(buf)
	pr.Close()
	if string(buf[:n]) != "ready\n" {
		_ = d.mnt.Process.Kill()
		t.Fatalf("mount namespace for dockerd: %s", out.String())
	}
	d.mntPath = "/proc/" + itoa(d.mnt.Process.Pid) + "/ns/mnt"
}

// startAgent runs fabricd in the host network namespace and the private
// mount namespace, with DOCKER_HOST pointing at this host's dockerd.
func (d *dockerHost) startAgent() {
	d.t.Helper()
	d.startWith([]string{"--net=" + d.nsPath, "--mount=" + d.mntPath}, []string{"DOCKER_HOST=unix://" + d.dsock})
}

// startDockerd runs dockerd (live-restore: containers outlive it) and
// waits until it answers.
func (d *dockerHost) startDockerd() {
	t := d.t
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(d.dir, "dockerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	d.dockerd = exec.Command("nsenter", "--net="+d.nsPath, "--mount="+d.mntPath, "/usr/sbin/dockerd",
		"--storage-driver", "vfs", "--bridge", "none", "--iptables=false", "--ip6tables=false", "--live-restore", "--dns", "169.254.53.53",
		"--data-root", d.dataRoot, "--exec-root", d.execRoot, "-H", "unix://"+d.dsock,
		"--pidfile", filepath.Join(d.dir, "dockerd.pid"), "--containerd-namespace", d.prefix,
		"--containerd-plugins-namespace", d.prefix+"p")
	d.dockerd.Stdout, d.dockerd.Stderr = logf, logf
	if err := d.dockerd.Start(); err != nil {
		t.Fatalf("start dockerd: %v", err)
	}
	logf.Close()
	go func(c *exec.Cmd) { _ = c.Wait() }(d.dockerd)
	if netnstest.PollEvery(15*time.Second, 100*time.Millisecond, func() bool { _, _, code := d.docker("version"); return code == 0 }) {
		return
	}
	b, _ := os.ReadFile(filepath.Join(d.dir, "dockerd.log"))
	t.Skipf("dockerd did not start within 15s (cannot run Docker here):\n%s", tail(string(b), 3000))
}

// stopDockerd ends dockerd (SIGTERM; with live-restore the containers
// keep running) and waits for it.
func (d *dockerHost) stopDockerd() {
	if d.dockerd == nil || d.dockerd.Process == nil {
		return
	}
	_ = d.dockerd.Process.Signal(syscall.SIGTERM)
	netnstest.PollEvery(10*time.Second, 50*time.Millisecond, func() bool { return d.dockerd.Process.Signal(syscall.Signal(0)) != nil })
	_ = d.dockerd.Process.Kill()
	d.dockerd = nil
}

// importBusybox makes image "bb" from the host's static busybox.
func (d *dockerHost) importBusybox() {
	t := d.t
	root := filepath.Join(d.dir, "rootfs")
	for _, dir := range []string{"bin", "etc", "tmp", "proc", "sys", "dev", "www"} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	run(t, "cp", "/bin/busybox", filepath.Join(root, "bin", "busybox"))
	for _, c := range []string{"sh", "ping", "nc", "wget", "ip", "cat", "sleep", "nslookup", "httpd", "echo", "true"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", c)); err != nil {
			t.Fatal(err)
		}
	}
	tarPath := filepath.Join(d.dir, "bb.tar")
	run(t, "tar", "-C", root, "-cf", tarPath, ".")
	d.mustDocker("import", tarPath, "bb")
}

// docker runs the docker CLI against this host's dockerd.
func (d *dockerHost) docker(args ...string) (stdout, stderr string, code int) {
	stdout, stderr, code = testbin.Run(90*time.Second, nil, "/usr/bin/docker", append([]string{"-H", "unix://" + d.dsock}, args...)...)
	return strings.TrimSpace(stdout), strings.TrimSpace(stderr), code
}

func (d *dockerHost) mustDocker(args ...string) string {
	d.t.Helper()
	out, errOut, code := d.docker(args...)
	if code != 0 {
		d.t.Fatalf("docker %s: exit %d\nstdout: %s\nstderr: %s\nfabricd log:\n%s", strings.Join(args, " "), code, out, errOut, d.log())
	}
	return out
}

// dockerFails runs a docker command that must fail with an error
// containing want.
func (d *dockerHost) dockerFails(want string, args ...string) {
	d.t.Helper()
	out, errOut, code := d.docker(args...)
	if code == 0 {
		d.t.Fatalf("docker %s succeeded (%s), want an error with %q", strings.Join(args, " "), out, want)
	}
	if !strings.Contains(errOut, want) {
		d.t.Fatalf("docker %s: error %q does not say %q", strings.Join(args, " "), errOut, want)
	}
}

// dockerSandboxes lists fabric's sandboxes owned by Docker.
func (d *dockerHost) dockerSandboxes() []api.Sandbox {
	d.t.Helper()
	var all, out []api.Sandbox
	d.ctlJSON(&all, "sandbox", "ls")
	for _, sb := range all {
		if sb.Owner == "docker" {
			out = append(out, sb)
		}
	}
	return out
}

// mustWait polls cond (every 50ms, at most limit) and fails with what.
func mustWait(t *testing.T, limit time.Duration, what string, cond func() bool, detail ...func() string) {
	t.Helper()
	if netnstest.PollEvery(limit, 50*time.Millisecond, cond) {
		return
	}
	var more string
	for _, f := range detail {
		more += "\n" + f()
	}
	t.Fatalf("timed out after %v waiting for %s%s", limit, what, more)
}

// containerIP is a container's address on a Docker network, as Docker
// reports it.
func (d *dockerHost) containerIP(container, network string) string {
	d.t.Helper()
	out := d.mustDocker("inspect", "-f", "{{json .NetworkSettings.Networks}}", container)
	var nets map[string]struct{ IPAddress string }
	if err := json.Unmarshal([]byte(out), &nets); err != nil {
		d.t.Fatalf("decode %q: %v", out, err)
	}
	return nets[network].IPAddress
}

func (d *dockerHost) cleanup() {
	if d.t.Failed() {
		b, _ := os.ReadFile(filepath.Join(d.dir, "dockerd.log"))
		d.t.Logf("dockerd log (tail):\n%s", tail(string(b), 3000))
	}
	if d.dockerd != nil {
		ids, _, _ := d.docker("ps", "-aq")
		if ids != "" {
			d.docker(append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
		}
		d.stopDockerd()
	}
	d.host.cleanup()
	if d.mnt != nil && d.mnt.Process != nil {
		_ = d.mnt.Process.Kill()
		_ = d.mnt.Wait()
	}
	// vfs layers and Docker's mounts live under the test's temp dir.
	_ = exec.Command("umount", "-R", "-l", d.execRoot).Run()
	_ = exec.Command("umount", "-R", "-l", d.dataRoot).Run()
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
