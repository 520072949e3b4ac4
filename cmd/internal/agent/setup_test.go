package agent

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// TestSandboxCommandHoldsNoNamespaceMounts: a sandbox's command runs in a
// mount namespace of its own with the sandbox's resolv.conf, like under
// `ip netns exec`, but holding no namespace mount: `ip netns exec` copied
// every sandbox's /var/run/netns mount into every command's mount
// namespace and propagated each new one to all of them, so each namespace
// create and delete cost more the more sandboxes ran.
func TestSandboxCommandHoldsNoNamespaceMounts(t *testing.T) {
	netnstest.RequireRoot(t)
	a := newTestAgent(t, t.TempDir(), newFake())
	defer a.Close()
	ctx := context.Background()
	var pids []int
	for range 3 {
		sb, err := a.CreateSandbox(ctx, api.SandboxCreate{Name: sandboxName(t, "hm"), Command: []string{"sleep", "600"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = a.RemoveSandbox(context.Background(), sb.Name) })
		pids = append(pids, sb.PID)
	}
	for _, pid := range pids {
		info, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/mountinfo")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(info), " /etc/resolv.conf ") {
			t.Errorf("command %d: no resolv.conf of its own:\n%s", pid, info)
		}
		for _, line := range strings.Split(string(info), "\n") {
			if strings.Contains(line, " - nsfs ") || strings.Contains(line, "/netns ") {
				t.Errorf("command %d holds a namespace mount: %s", pid, line)
			}
		}
	}
}
