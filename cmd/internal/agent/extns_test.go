package agent

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// newExtNSTestAgent is the root-only agent on a fake datapath, in dir, of
// the tests that connect namespaces by path; the references it holds are
// dropped when the test ends.
func newExtNSTestAgent(t *testing.T, dir string) (*Agent, *fakeDatapath) {
	t.Helper()
	netnstest.RequireRoot(t)
	dp := newFake()
	a := newKernelTestAgent(t, dir, dp)
	releaseHeldAtEnd(t, a)
	return a, dp
}

// releaseHeldAtEnd drops every namespace reference the agent holds when
// the test ends, even if it failed half-way.
func releaseHeldAtEnd(t *testing.T, a *Agent) {
	dir := a.heldDir()
	t.Cleanup(func() {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			releaseHeld(filepath.Join(dir, e.Name()))
		}
	})
}

// TestConnectByPathRefusesHostAndNonNetNamespaces: the agent's own
// namespace, the host's (PID 1's), other kinds of namespace and plain
// files are refused with a reason, and nothing is created.
func TestConnectByPathRefusesHostAndNonNetNamespaces(t *testing.T) {
	a, dp := newExtNSTestAgent(t, t.TempDir())
	defer a.Close()
	plain := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"/proc/self/ns/net":          "agent's own",
		"/proc/self/ns/mnt":          "not a network namespace",
		plain:                        "not a network namespace",
		"/proc/999999999/ns/net":     "does not exist",
		"/var/run/netns/no-such-one": "does not exist",
	} {
		_, err := a.Connect(context.Background(), DefaultNetworkName, api.Connect{Sandbox: path})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("connect %s: %v, want an error saying %q", path, err, want)
		}
	}
	// PID 1's namespace is refused as the host's, or (where the agent
	// may not look at PID 1, as in some containers) as not accessible.
	_, err := a.Connect(context.Background(), DefaultNetworkName, api.Connect{Sandbox: "/proc/1/ns/net"})
	if err == nil || !strings.Contains(err.Error(), "host's network namespace") && !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("connect /proc/1/ns/net: %v, want refused as the host's", err)
	}
	if len(a.Sandboxes()) != 0 || len(dp.endpoints) != 0 {
		t.Fatalf("refused connects left %+v / %d endpoints", a.Sandboxes(), len(dp.endpoints))
	}
	if entries, _ := os.ReadDir(a.heldDir()); len(entries) != 0 {
		t.Fatalf("refused connects left references: %v", entries)
	}
}

// TestConnectByPathPermissionDenied: a namespace the agent may not open is
// reported as such, not as "not a network namespace".
func TestConnectByPathPermissionDenied(t *testing.T) {
	a := newKernelTestAgent(t, t.TempDir(), newFake())
	defer a.Close()
	openNSFile = func(path string) (*os.File, error) {
		return nil, &os.PathError{Op: "open", Path: path, Err: syscall.EACCES}
	}
	t.Cleanup(func() { openNSFile = os.Open })
	_, err := a.Connect(context.Background(), DefaultNetworkName, api.Connect{Sandbox: "/proc/1/ns/net"})
	if err == nil || !strings.Contains(err.Error(), "permission denied") || strings.Contains(err.Error(), "not a network namespace") {
		t.Fatalf("connect with EACCES: %v, want permission denied", err)
	}
}

// TestExternalNamespaceHeldByIdentity: a namespace connected by path is
// programmed through the agent's own reference to it, checked by
// identity. When the path comes to name another namespace (the PID is
// reused, the named namespace is recreated), a repair still acts on the
// original namespace only, and the agent then lets go of it.
func TestExternalNamespaceHeldByIdentity(t *testing.T) {
	a, dp := newExtNSTestAgent(t, t.TempDir())
	defer a.Close()
	ctx := context.Background()
	name, path := netnstest.New(t, "ext")
	orig, err := netns.IDOf(path)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := a.Connect(ctx, DefaultNetworkName, api.Connect{Sandbox: path})
	if err != nil {
		t.Fatal(err)
	}
	sb, err := a.Sandbox(path)
	if err != nil {
		t.Fatal(err)
	}
	if sb.Origin != path || filepath.Dir(sb.NetNS) != a.heldDir() {
		t.Fatalf("sandbox %+v: want origin %s and a reference under %s", sb, path, a.heldDir())
	}
	dep := dp.endpoints[ep.ID]
	if dep.NetNSID != orig || dep.NetNSPath != sb.NetNS {
		t.Fatalf("datapath endpoint namespace %s %+v, want the reference with identity %+v", dep.NetNSPath, dep.NetNSID, orig)
	}

	// The path now names another namespace.
	netnstest.Remove(name)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	now, _ := netns.IDOf(path)
	if now == orig {
		t.Fatal("recreated namespace has the old identity")
	}
	a.mu.Lock()
	var rec *endpointRec
	for _, e := range a.endpoints {
		rec = e
	}
	err = a.ensureEndpoint(ctx, rec)
	a.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	dep = dp.endpoints[ep.ID]
	if got, err := netns.IDOf(dep.NetNSPath); err != nil || got != orig || dep.NetNSID != orig {
		t.Fatalf("repair went to %s (%+v, want %+v): another namespace", dep.NetNSPath, got, orig)
	}
	// The owner let go: so does the agent.
	a.checkExternalOwners(ctx)
	if len(a.Sandboxes()) != 0 || len(dp.endpoints) != 0 {
		t.Fatalf("after the owner let go: sandboxes %+v, %d endpoints", a.Sandboxes(), len(dp.endpoints))
	}
	if _, err := os.Stat(sb.NetNS); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("reference %s left: %v", sb.NetNS, err)
	}
}

// TestExternalNamespaceAcrossRestarts: a restarted agent that lost its
// reference (a reboot, a new mount namespace) takes it again from the
// original path only if that path still names the same namespace; if it
// names another one now, the sandbox is dropped and nothing is programmed
// into the newcomer.
func TestExternalNamespaceAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	a, dp := newExtNSTestAgent(t, dir)
	ctx := context.Background()
	name, path := netnstest.New(t, "exr")
	orig, _ := netns.IDOf(path)
	ep, err := a.Connect(ctx, DefaultNetworkName, api.Connect{Sandbox: path})
	if err != nil {
		t.Fatal(err)
	}
	sb, _ := a.Sandbox(path)
	a.Close()

	// The reference is lost while the agent is down: taken again.
	releaseHeld(sb.NetNS)
	a = newKernelTestAgent(t, dir, dp)
	got, err := a.Sandbox(path)
	if err != nil || got.NetNS != sb.NetNS {
		t.Fatalf("after a restart without the reference: %+v %v", got, err)
	}
	if id, err := netns.IDOf(got.NetNS); err != nil || id != orig || dp.endpoints[ep.ID].NetNSID != orig {
		t.Fatalf("reference %s is %+v (%v), endpoint %+v; want %+v", got.NetNS, id, err, dp.endpoints[ep.ID], orig)
	}
	a.Close()

	// Down again; the reference is lost and the path now names another
	// namespace: the sandbox goes, nothing is programmed into the new one.
	releaseHeld(sb.NetNS)
	netnstest.Remove(name)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	a = newKernelTestAgent(t, dir, dp)
	defer a.Close()
	if sbs := a.Sandboxes(); len(sbs) != 0 {
		t.Fatalf("sandboxes after the namespace was replaced: %+v", sbs)
	}
	last := dp.syncs[len(dp.syncs)-1]
	if len(last.Endpoints) != 0 || len(dp.endpoints) != 0 {
		t.Fatalf("endpoints programmed after the namespace was replaced: %+v", last.Endpoints)
	}
}
