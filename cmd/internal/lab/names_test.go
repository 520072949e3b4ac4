package lab_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// Sandbox names belong to a node, not to the machine: two lab nodes run a
// sandbox called "api" each, in namespaces of their own, and removing one
// leaves the other.
func TestLabNodesHaveTheirOwnSandboxNames(t *testing.T) {
	l := newTestLab(t)
	l.up(2, "kernel")
	inspect := func(i int, name string) api.Sandbox {
		t.Helper()
		var got []api.Sandbox
		if err := json.Unmarshal([]byte(l.on(i, "sandbox", "inspect", name)), &got); err != nil || len(got) != 1 {
			t.Fatalf("inspect %s on n%d: %v", name, i, err)
		}
		return got[0]
	}
	paths := map[string]bool{}
	for i := 1; i <= 2; i++ {
		l.on(i, "run", "-d", "--name", "api", "--", "sleep", "300")
		sb := inspect(i, "api")
		want := "/var/run/netns/" + l.netns(i) + "-api"
		if sb.NetNS != want {
			t.Errorf("n%d: sandbox api at %s, want %s", i, sb.NetNS, want)
		}
		paths[sb.NetNS] = true
		// ip netns exec works with the namespace's full name.
		out, err := exec.Command("ip", "netns", "exec", l.netns(i)+"-api", "ip", "-o", "addr", "show", "eth0").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "inet ") {
			t.Errorf("ip netns exec %s-api: %v: %s", l.netns(i), err, out)
		}
	}
	if len(paths) != 2 {
		t.Fatalf("the two nodes' sandboxes share a namespace: %v", paths)
	}
	l.on(1, "sandbox", "rm", "api")
	if sb := inspect(2, "api"); sb.State != api.StateRunning {
		t.Errorf("n2's api after n1's was removed: %s", sb.State)
	}
	if _, err := os.Lstat("/var/run/netns/" + l.netns(2) + "-api"); err != nil {
		t.Errorf("n2's namespace after n1's api was removed: %v", err)
	}
	if _, err := os.Lstat("/var/run/netns/" + l.netns(1) + "-api"); !os.IsNotExist(err) {
		t.Errorf("n1's namespace after sandbox rm: %v", err)
	}

	// From a checkout fabricctl is not on PATH; `lab exec` puts its own
	// directory there, so `fabricctl` inside means this fabricctl.
	cmd := exec.Command(filepath.Join(binDir, "fabricctl"), "lab", "--name", l.name, "exec", "n2", "--", "fabricctl", "sandbox", "inspect", "api")
	cmd.Env = append(withoutFabricEnv(os.Environ()), "PATH=/usr/sbin:/usr/bin:/sbin:/bin")
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), l.netns(2)+"-api") {
		t.Errorf("lab exec n2 -- fabricctl with fabricctl not on PATH: %v\n%s", err, out)
	}
}
