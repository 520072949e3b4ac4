package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fabricnet/fabric/cmd/internal/lab"
	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// The whole lab (namespaces, agents) is tested end to end, as binaries, in
// cmd/internal/lab. These tests cover the command line itself.

// tempLabRoot points the lab commands at an empty directory for one test.
func tempLabRoot(t *testing.T) string {
	t.Helper()
	old := labRoot
	labRoot = t.TempDir()
	t.Cleanup(func() { labRoot = old })
	return labRoot
}

func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 0 {
		t.Errorf("%s: %v %v, want it empty", dir, entries, err)
	}
}

func TestLabUpRejectsBadOptionsAndCreatesNothing(t *testing.T) {
	root := tempLabRoot(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--nodes", "0"}, "--nodes 0: a lab has 1 to 16 nodes"},
		{[]string{"--nodes", "17"}, "--nodes 17: a lab has 1 to 16 nodes"},
		{[]string{"--nodes", "three"}, `invalid argument "three"`},
		{[]string{"--subnet", "10.99.0.0"}, `--subnet "10.99.0.0" is not a CIDR`},
		{[]string{"--subnet", "10.99.0.9/24"}, "did you mean 10.99.0.0/24?"},
		{[]string{"--subnet", "fd00::/64"}, "must be an IPv4 CIDR"},
		{[]string{"--subnet", "10.99.0.0/28", "--nodes", "8"}, "room for 4 node(s)"},
		{[]string{"--datapath", "fast"}, `--datapath "fast": use one of auto, ebpf, kernel`},
		{[]string{"--name", "a/b"}, `lab name "a/b"`},
		{[]string{"--fabricd", "/nonexistent/fabricd"}, "fabricd binary"},
		{[]string{"extra"}, "accepts no arguments"},
	} {
		r := runCtl(t, append([]string{"lab", "up"}, tc.args...)...)
		if r.code != exitFailure || !strings.Contains(r.stderr, tc.want) || !strings.Contains(r.stderr, "See 'fabricctl lab up --help'") {
			t.Errorf("%v: exit %d, stderr %q; want 1, %q and a --help hint", tc.args, r.code, r.stderr, tc.want)
		}
		if r.stdout != "" {
			t.Errorf("%v: stdout %q", tc.args, r.stdout)
		}
	}
	assertEmptyDir(t, root)
}

func TestLabDownOfMissingLabSucceeds(t *testing.T) {
	tempLabRoot(t)
	r := runCtl(t, "lab", "down", "--name", "ghost")
	if r.code != 0 || r.stdout != "No lab ghost: nothing to remove.\n" {
		t.Errorf("exit %d, stdout %q", r.code, r.stdout)
	}
	r = runCtl(t, "-o", "json", "lab", "down", "--name", "ghost")
	var rep lab.DownReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); r.code != 0 || err != nil || rep.Name != "ghost" || len(rep.Removed) != 0 {
		t.Errorf("json: exit %d, %q (%v)", r.code, r.stdout, err)
	}
}

func TestLabStatusAndExecOfMissingLab(t *testing.T) {
	root := tempLabRoot(t)
	r := runCtl(t, "lab", "status")
	if r.code != exitFailure || !strings.Contains(r.stderr, "no such lab: lab") || !strings.Contains(r.stderr, "there are no labs") {
		t.Errorf("status: exit %d, stderr %q", r.code, r.stderr)
	}
	os.MkdirAll(filepath.Join(root, "other"), 0o700)
	r = runCtl(t, "lab", "exec", "n1", "--", "true")
	if r.code != exitFailure || !strings.Contains(r.stderr, "existing labs: other (choose with --name)") {
		t.Errorf("exec: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCtl(t, "lab", "exec")
	if r.code != exitFailure || !strings.Contains(r.stderr, "needs a node") || !strings.Contains(r.stderr, "--help") {
		t.Errorf("exec without node: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestLabHelpHasExamples(t *testing.T) {
	for _, sub := range []string{"", "up", "status", "exec", "down"} {
		args := []string{"lab"}
		if sub != "" {
			args = append(args, sub)
		}
		r := runCtl(t, append(args, "--help")...)
		if r.code != 0 || !strings.Contains(r.stdout, "Examples:") || !strings.Contains(r.stdout, "fabricctl lab ") {
			t.Errorf("%v --help: exit %d, %q", args, r.code, r.stdout)
		}
	}
	r := runCtl(t, "lab", "up", "--help")
	for _, flag := range []string{"--nodes", "--datapath", "--name", "--fabricd", "--subnet", "10.99.0.0/24"} {
		if !strings.Contains(r.stdout, flag) {
			t.Errorf("lab up --help lacks %s", flag)
		}
	}
}

func TestLabUpText(t *testing.T) {
	st := lab.Status{
		Name: "demo", Dir: "/run/fabric/lab/demo", Datapath: "kernel",
		Subnet: netip.MustParsePrefix("10.99.0.0/24"), Gateway: netip.MustParseAddr("10.99.0.1"),
		Underlay: lab.Underlay{NetNS: "demo-ul", Bridge: "br0"},
		Nodes: []lab.NodeStatus{
			{ID: "n1", NetNS: "demo-n1", IP: netip.MustParseAddr("10.99.0.11"), Socket: "/run/fabric/lab/demo/n1/fabricd.sock",
				Log: "/run/fabric/lab/demo/n1/fabricd.log", PID: 7, Alive: true, State: lab.NodeRunning, Datapath: "kernel", NetNSOK: true},
			{ID: "n2", NetNS: "demo-n2", IP: netip.MustParseAddr("10.99.0.12"), Socket: "/run/fabric/lab/demo/n2/fabricd.sock",
				Log: "/run/fabric/lab/demo/n2/fabricd.log", State: lab.NodeDead},
		},
	}
	var b strings.Builder
	if err := labUpText(&b, st); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"Lab demo is up: 2 node(s), datapath kernel",
		"fabricctl --socket /run/fabric/lab/demo/n2/fabricd.sock status",
		"fabricctl lab --name demo exec n1 -- fabricctl run --rm -- ip addr",
		"fabricctl lab --name demo down",
		"dead (namespace gone)",
		"Logs: /run/fabric/lab/demo/n1/fabricd.log /run/fabric/lab/demo/n2/fabricd.log",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// lab exec switches only the network namespace (never the mount
// namespace, where bpffs lives) and points FABRIC_SOCKET at the node.
func TestLabExecEntersOnlyTheNodeNetworkNamespace(t *testing.T) {
	netnstest.RequireRoot(t)
	root := tempLabRoot(t)
	name := netnstest.UniqueName("flx")
	nsPath, err := netns.CreateNamed(name + "-n1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netnstest.Remove(name + "-n1") })
	m := lab.Manifest{
		Version: 1, Name: name, Dir: filepath.Join(root, name), State: lab.StateUp,
		Underlay: lab.Underlay{NetNS: name + "-ul", Bridge: "br0"},
		Nodes:    []lab.Node{{ID: "n1", Name: name + "-n1", NetNS: name + "-n1", Socket: "/tmp/x-n1.sock"}},
	}
	data, _ := json.Marshal(m)
	os.MkdirAll(m.Dir, 0o700)
	if err := os.WriteFile(filepath.Join(m.Dir, lab.ManifestFile), data, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(socketEnv, "/somewhere/else.sock")

	r := runCtl(t, "lab", "--name", name, "exec", "1", "--", "sh", "-c", "echo $FABRIC_SOCKET; readlink /proc/self/ns/net /proc/self/ns/mnt; exit 3")
	id, err := netns.IDOf(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	mnt, _ := os.Readlink("/proc/self/ns/mnt")
	want := fmt.Sprintf("/tmp/x-n1.sock\nnet:[%d]\n%s\n", id.Ino, mnt)
	if r.code != 3 || r.stdout != want {
		t.Errorf("exit %d, stdout %q; want 3, %q", r.code, r.stdout, want)
	}
}
