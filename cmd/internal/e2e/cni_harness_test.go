package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/cni"
	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// debianCNI is where Debian's containernetworking-plugins put the
// reference plugins (make deps-cni).
const debianCNI = "/usr/lib/cni"

var (
	cniBuildOnce sync.Once
	cniBuildErr  error
)

// cniPluginDir builds fabric-cni next to the other test binaries, once.
func cniPluginDir(t *testing.T) string {
	t.Helper()
	cniBuildOnce.Do(func() {
		out, err := exec.Command("go", "build", "-o", binDir, "github.com/fabricnet/fabric/cmd/fabric-cni").CombinedOutput()
		if err != nil {
			cniBuildErr = fmt.Errorf("build fabric-cni: %v\n%s", err, out)
		}
	})
	if cniBuildErr != nil {
		t.Fatal(cniBuildErr)
	}
	return binDir
}

// cniHost is a test host with a fabric network for pods and a libcni
// runtime whose plugins run in the host's namespace, as a runtime on
// that host would run them.
type cniHost struct {
	*host
	network string // fabric network
	subnet  string
	cfg     *libcni.CNIConfig
	cache   string
}

func newCNIHost(t *testing.T, extra ...string) *cniHost {
	t.Helper()
	h := newHost(t, extra...)
	dir := cniPluginDir(t)
	c := &cniHost{host: h, network: h.name("pods"), subnet: "10.77.0.0/24", cache: t.TempDir()}
	h.mustCtl("network", "create", "--subnet", c.subnet, c.network)
	c.cfg = libcni.NewCNIConfigWithCacheDir([]string{dir, debianCNI}, c.cache, nil)
	return c
}

// confList is a network configuration list of the given spec version:
// fabric-cni with every capability, then the chained plugins.
func (c *cniHost) confList(t *testing.T, version string, chained ...map[string]any) *libcni.NetworkConfigList {
	t.Helper()
	plugins := []map[string]any{{
		"type": cni.Type, "network": c.network, "socket": c.socket,
		"capabilities": map[string]bool{"portMappings": true, "ips": true, "mac": true},
	}}
	plugins = append(plugins, chained...)
	b, err := json.Marshal(map[string]any{"cniVersion": version, "name": c.network, "plugins": plugins})
	if err != nil {
		t.Fatal(err)
	}
	l, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatalf("conflist: %v", err)
	}
	return l
}

// inHostNS runs fn on a thread in the host's network namespace, so that
// the plugins libcni executes run there (they inherit the thread's
// namespace). The thread switches back after fn (a thread left in the
// host's namespace could be the process's main thread, and the host's
// clean-up kills every process whose namespace it is).
func (c *cniHost) inHostNS(fn func() error) error {
	return netns.Do(c.nsPath, fn)
}

func (c *cniHost) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 90*time.Second)
}

func (c *cniHost) add(l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (types.Result, error) {
	var res types.Result
	err := c.inHostNS(func() error {
		ctx, cancel := c.ctx()
		defer cancel()
		var err error
		res, err = c.cfg.AddNetworkList(ctx, l, rt)
		return err
	})
	return res, err
}

func (c *cniHost) check(l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return c.inHostNS(func() error {
		ctx, cancel := c.ctx()
		defer cancel()
		return c.cfg.CheckNetworkList(ctx, l, rt)
	})
}

func (c *cniHost) del(l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return c.inHostNS(func() error {
		ctx, cancel := c.ctx()
		defer cancel()
		return c.cfg.DelNetworkList(ctx, l, rt)
	})
}

func (c *cniHost) gc(l *libcni.NetworkConfigList, valid []types.GCAttachment) error {
	return c.inHostNS(func() error {
		ctx, cancel := c.ctx()
		defer cancel()
		return c.cfg.GCNetworkList(ctx, l, &libcni.GCArgs{ValidAttachments: valid})
	})
}

func (c *cniHost) status(l *libcni.NetworkConfigList) error {
	return c.inHostNS(func() error {
		ctx, cancel := c.ctx()
		defer cancel()
		return c.cfg.GetStatusNetworkList(ctx, l)
	})
}

// cniCode is the spec error code of err (0 if it is not a spec error).
func cniCode(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// cniSandboxes are the sandboxes the agent keeps for CNI.
func (c *cniHost) cniSandboxes(t *testing.T) []api.Sandbox {
	t.Helper()
	var sbs, out []api.Sandbox
	c.ctlJSON(&sbs, "sandbox", "ls")
	for _, sb := range sbs {
		if sb.Owner == api.OwnerCNI {
			out = append(out, sb)
		}
	}
	return out
}

// waitNoCNISandbox waits until the agent keeps no sandbox for CNI.
func (c *cniHost) waitNoCNISandbox(t *testing.T, within time.Duration) {
	t.Helper()
	var sbs []api.Sandbox
	if !netnstest.PollEvery(within, 100*time.Millisecond, func() bool { sbs = c.cniSandboxes(t); return len(sbs) == 0 }) {
		t.Fatalf("CNI sandboxes still there after %v: %+v", within, sbs)
	}
}

// podNS makes a pod namespace as a runtime does: empty but for lo.
func podNS(t *testing.T) (name, path string) {
	t.Helper()
	name, path = netnstest.New(t, "fp")
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name, path
}

// podConf makes a pod namespace (podNS) and the runtime's conf for
// attaching container id's eth0 in it.
func podConf(t *testing.T, id string) (pod string, rt *libcni.RuntimeConf) {
	t.Helper()
	pod, path := podNS(t)
	return pod, &libcni.RuntimeConf{ContainerID: cniTestID(t, id), NetNS: path, IfName: "eth0"}
}

// links lists the interface names in a namespace.
func links(t *testing.T, ns string) []string {
	t.Helper()
	out := run(t, "ip", "-n", ns, "-o", "link", "show")
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 {
			names = append(names, strings.Split(strings.TrimSuffix(f[1], ":"), "@")[0])
		}
	}
	return names
}

// cniTestID is a container ID unique to the test run.
func cniTestID(t *testing.T, s string) string {
	return fmt.Sprintf("%s-%d-%s", strings.ReplaceAll(t.Name(), "/", "-"), os.Getpid(), s)
}
