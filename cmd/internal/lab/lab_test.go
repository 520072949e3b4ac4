package lab

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func validOptions() Options {
	return Options{Name: "lab", Nodes: 3, Datapath: "kernel", Fabricd: "/usr/bin/true", Subnet: DefaultSubnet}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Options)
		want string // "" = valid
	}{
		{"defaults", func(*Options) {}, ""},
		{"one node", func(o *Options) { o.Nodes = 1 }, ""},
		{"sixteen nodes", func(o *Options) { o.Nodes = 16 }, ""},
		{"zero nodes", func(o *Options) { o.Nodes = 0 }, "--nodes 0: a lab has 1 to 16 nodes"},
		{"seventeen nodes", func(o *Options) { o.Nodes = 17 }, "--nodes 17: a lab has 1 to 16 nodes"},
		{"datapath", func(o *Options) { o.Datapath = "xdp" }, `--datapath "xdp": use one of auto, ebpf, kernel`},
		{"empty name", func(o *Options) { o.Name = "" }, "must be 1 to 32 characters"},
		{"long name", func(o *Options) { o.Name = strings.Repeat("a", 33) }, "must be 1 to 32 characters"},
		{"slash", func(o *Options) { o.Name = "a/b" }, "use letters, digits"},
		{"leading dash", func(o *Options) { o.Name = "-a" }, "starting with a letter or digit"},
		{"dots", func(o *Options) { o.Name = ".." }, "use letters, digits"},
		{"name with - and _", func(o *Options) { o.Name = "my-lab_2" }, ""},
		{"ipv6", func(o *Options) { o.Subnet = netip.MustParsePrefix("fd00::/64") }, "must be an IPv4 CIDR"},
		{"no subnet", func(o *Options) { o.Subnet = netip.Prefix{} }, "must be an IPv4 CIDR"},
		{"host bits", func(o *Options) { o.Subnet = netip.MustParsePrefix("10.99.0.7/24") }, "did you mean 10.99.0.0/24?"},
		{"small", func(o *Options) { o.Subnet = netip.MustParsePrefix("10.99.0.0/28"); o.Nodes = 5 }, "room for 4 node(s)"},
		{"tiny", func(o *Options) { o.Subnet = netip.MustParsePrefix("10.99.0.0/30"); o.Nodes = 1 }, "room for 0 node(s)"},
		{"/27 holds 16", func(o *Options) { o.Subnet = netip.MustParsePrefix("10.99.0.32/27"); o.Nodes = 16 }, ""},
		{"relative fabricd", func(o *Options) { o.Fabricd = "bin/fabricd" }, "not absolute"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := validOptions()
			tc.edit(&o)
			err := o.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrInvalid containing %q", err, tc.want)
			}
		})
	}
}

func TestParseSubnet(t *testing.T) {
	if p, err := ParseSubnet("10.98.0.0/24"); err != nil || p != netip.MustParsePrefix("10.98.0.0/24") {
		t.Errorf("got %v, %v", p, err)
	}
	for _, bad := range []string{"", "10.98.0.0", "10.98.0.0/33", "lab"} {
		if _, err := ParseSubnet(bad); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "is not a CIDR") {
			t.Errorf("%q: got %v", bad, err)
		}
	}
}

func TestPlan(t *testing.T) {
	o := validOptions()
	o.Root, o.Subnet = "/run/x", netip.MustParsePrefix("10.99.4.0/24")
	m := plan(o)
	if m.Dir != "/run/x/lab" || m.Gateway.String() != "10.99.4.1" || m.Underlay.NetNS != "lab-ul" || m.State != StateCreating {
		t.Errorf("lab: %+v", m)
	}
	if len(m.Nodes) != 3 {
		t.Fatalf("%d nodes", len(m.Nodes))
	}
	n2 := m.Nodes[1]
	want := Node{
		ID: "n2", Name: "lab-n2", NetNS: "lab-n2", IP: netip.MustParseAddr("10.99.4.12"), Port: "n2",
		Dir: "/run/x/lab/n2", StateDir: "/run/x/lab/n2/state", Socket: "/run/x/lab/n2/fabricd.sock",
		Log: "/run/x/lab/n2/fabricd.log", BPFRoot: "/sys/fs/bpf/fabric-lab-lab-n2",
		Metrics: netip.MustParseAddrPort("10.99.4.12:9475"),
		Argv: []string{"/usr/bin/true", "--config", "/dev/null",
			"--state-dir", "/run/x/lab/n2/state", "--socket", "/run/x/lab/n2/fabricd.sock", "--node-name", "lab-n2",
			"--bpf-root", "/sys/fs/bpf/fabric-lab-lab-n2", "--datapath", "kernel", "--uplink", "eth0",
			"--metrics-listen", "10.99.4.12:9475", "--cluster-bind", "10.99.4.12:7946",
			"--netns-prefix", "lab-n2-", "--dns-upstreams", "10.99.4.1:53",
			"--cluster-secret-file", "/run/x/lab/gossip.key", "--cluster-join", "10.99.4.11:7946"},
	}
	if !reflect.DeepEqual(n2, want) {
		t.Errorf("node 2\n got %+v\nwant %+v", n2, want)
	}
	if slices.Contains(m.Nodes[0].Argv, "--cluster-join") {
		t.Errorf("node 1 must start the cluster, not join: %q", m.Nodes[0].Argv)
	}
	if n2.NetNSPath() != "/var/run/netns/lab-n2" {
		t.Errorf("netns path %s", n2.NetNSPath())
	}
}

// The longest name and node number must still give valid socket paths,
// namespace names and node names.
func TestPlanLimits(t *testing.T) {
	o := validOptions()
	o.Name, o.Nodes = strings.Repeat("x", maxName), MaxNodes
	o.Subnet = netip.MustParsePrefix("10.0.0.0/27")
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	m := plan(o)
	last := m.Nodes[len(m.Nodes)-1]
	if len(last.Socket) > 107 || len(last.NetNS) > 64 || len(last.Name) > 63 {
		t.Errorf("too long: socket %d, netns %d, node name %d", len(last.Socket), len(last.NetNS), len(last.Name))
	}
	if last.IP.String() != "10.0.0.26" {
		t.Errorf("node 16 at %s", last.IP)
	}
}

// savedManifest saves the plan of validOptions' lab "lab" under a new
// root, after edit has changed it, and returns the root and the manifest.
func savedManifest(t *testing.T, edit func(*Manifest)) (string, *Manifest) {
	t.Helper()
	o := validOptions()
	o.Root = t.TempDir()
	m := plan(o)
	if err := os.Mkdir(m.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	edit(m)
	if err := m.save(); err != nil {
		t.Fatal(err)
	}
	return o.Root, m
}

// loadSame loads lab "lab" from root and checks it is m, round-tripped.
func loadSame(t *testing.T, root string, m *Manifest) *Manifest {
	t.Helper()
	got, err := Load(root, "lab")
	if err != nil {
		t.Fatalf("load the saved manifest: %v", err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Errorf("round trip\n got %+v\nwant %+v", got, m)
	}
	return got
}

func TestManifestSaveLoadAndNode(t *testing.T) {
	root, m := savedManifest(t, func(m *Manifest) { m.Nodes[0].PID = 42 })
	got := loadSame(t, root, m)
	entries, _ := os.ReadDir(m.Dir)
	if len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
	for _, id := range []string{"n2", "2", "lab-n2"} {
		if n, err := got.Node(id); err != nil || n.ID != "n2" {
			t.Errorf("Node(%q) = %v, %v", id, n, err)
		}
	}
	if _, err := got.Node("n4"); err == nil || !strings.Contains(err.Error(), "its nodes are n1, n2, n3") {
		t.Errorf("unknown node: %v", err)
	}
	if names, err := List(root); err != nil || !reflect.DeepEqual(names, []string{"lab"}) {
		t.Errorf("List = %v, %v", names, err)
	}
}

// A manifest written before nodes had a metrics address still loads; the
// address is zero, and written back it stays absent.
func TestLoadManifestWithoutMetrics(t *testing.T) {
	root, m := savedManifest(t, func(m *Manifest) {
		for i := range m.Nodes {
			m.Nodes[i].Metrics = netip.AddrPort{}
		}
	})
	data, err := os.ReadFile(Path(root, "lab"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), `"metrics"`) {
		t.Fatalf("a zero metrics address is written out:\n%s", data)
	}
	got := loadSame(t, root, m)
	for _, n := range GetStatus(context.Background(), got).Nodes {
		if n.Metrics.IsValid() {
			t.Errorf("node %s: metrics %s, want none", n.ID, n.Metrics)
		}
	}
}

func TestLoadMissingAndCorrupt(t *testing.T) {
	root := t.TempDir()
	if _, err := Load(root, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing: %v", err)
	}
	if _, err := Load(root, "../etc"); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad name: %v", err)
	}
	os.MkdirAll(filepath.Join(root, "bad"), 0o700)
	os.WriteFile(filepath.Join(root, "bad", ManifestFile), []byte(`{"version": 99}`), 0o600)
	if _, err := Load(root, "bad"); err == nil || !strings.Contains(err.Error(), "version 99") {
		t.Errorf("future version: %v", err)
	}
	// A manifest naming namespaces this lab would not have made is refused,
	// so down cannot delete them.
	o := validOptions()
	o.Root = root
	for _, edit := range []func(*Manifest){
		func(m *Manifest) { m.Name = "other" },
		func(m *Manifest) { m.Underlay.NetNS = "smk" },
		func(m *Manifest) { m.Nodes[1].NetNS = "somebody-else" },
		func(m *Manifest) { m.Nodes[1].ID, m.Nodes[1].NetNS = "../x", "lab-../x" },
	} {
		m := plan(o)
		os.MkdirAll(m.Dir, 0o700)
		edit(m)
		if err := m.save(); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(root, "lab"); err == nil {
			t.Errorf("accepted a manifest naming foreign objects: %+v", m)
		}
	}
	if names, _ := List(filepath.Join(root, "none")); names != nil {
		t.Errorf("List of a missing root: %v", names)
	}
}

func TestDownOfMissingLabAndOfEmptyDir(t *testing.T) {
	root := t.TempDir()
	rep, err := Down(context.Background(), root, "nope", nil)
	if !errors.Is(err, ErrNotFound) || rep == nil {
		t.Errorf("missing lab: %v", err)
	}
	// Up died after claiming the directory, before writing the manifest:
	// nothing else exists, so the directory is all there is to remove.
	dir := filepath.Join(root, "half")
	os.MkdirAll(dir, 0o700)
	if _, err := Down(context.Background(), root, "half", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("directory left: %v", err)
	}
}

func TestUpRefusesAnExistingLabAndBadFabricd(t *testing.T) {
	o := validOptions()
	o.Root = t.TempDir()
	os.MkdirAll(filepath.Join(o.Root, "lab"), 0o700)
	_, err := Up(context.Background(), o, nil)
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "fabricctl lab down --name lab") {
		t.Errorf("existing lab: %v", err)
	}

	o.Name = "other"
	for _, bad := range []string{filepath.Join(o.Root, "missing"), o.Root} {
		o.Fabricd = bad
		if _, err := Up(context.Background(), o, nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("fabricd %s: %v", bad, err)
		}
	}
	if _, err := os.Stat(filepath.Join(o.Root, "other")); !os.IsNotExist(err) {
		t.Errorf("a rejected up left its directory: %v", err)
	}
}

func TestLockDirIsExclusive(t *testing.T) {
	dir := t.TempDir()
	unlock, err := lockDir(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockDir(dir, 0); !errors.Is(err, ErrBusy) {
		t.Errorf("second lock: %v", err)
	}
	unlock()
	unlock2, err := lockDir(dir, 0)
	if err != nil {
		t.Fatalf("after unlock: %v", err)
	}
	unlock2()
}

func TestIsAgentArgv(t *testing.T) {
	const sock = "/run/fabric/lab/l/n1/fabricd.sock"
	for _, tc := range []struct {
		argv []string
		want bool
	}{
		{[]string{"/usr/local/bin/fabricd", "--socket", sock}, true},
		{[]string{"fabricd", "--state-dir", "/x", "--socket=" + sock}, true},
		{[]string{"/opt/fabricd-dev", "--socket", sock}, true}, // the lab's own binary
		{[]string{"/usr/local/bin/fabricd", "--socket", sock + "x"}, false},
		{[]string{"/usr/local/bin/fabricd", "--socket"}, false},
		{[]string{"/usr/local/bin/fabricd"}, false},
		{[]string{"sleep", "--socket", sock}, false},
		{[]string{"nsenter", "--net=/var/run/netns/l-n1", "fabricd", "--socket", sock}, false},
		{nil, false},
	} {
		if got := isAgentArgv(tc.argv, "/opt/fabricd-dev", sock); got != tc.want {
			t.Errorf("%q: got %v, want %v", tc.argv, got, tc.want)
		}
	}
}

func TestProcHelpers(t *testing.T) {
	old := procDir
	procDir = t.TempDir()
	t.Cleanup(func() { procDir = old })
	write := func(pid, name, content string) {
		os.MkdirAll(filepath.Join(procDir, pid), 0o755)
		os.WriteFile(filepath.Join(procDir, pid, name), []byte(content), 0o644)
	}
	write("10", "stat", "10 (fabricd) S 1 10 10 0")
	write("10", "cmdline", "/bin/fabricd\x00--socket\x00/s\x00")
	write("11", "stat", "11 (odd) name) Z 1 11 11 0")
	write("11", "cmdline", "")
	write("12", "stat", "12 (sleep) R 1")
	os.MkdirAll(filepath.Join(procDir, "self"), 0o755)

	if got := pids(); !reflect.DeepEqual(got, []int{10, 11, 12}) {
		t.Errorf("pids %v", got)
	}
	if !running(10) || running(11) || !running(12) || running(13) {
		t.Errorf("running: 10=%v 11=%v 12=%v 13=%v", running(10), running(11), running(12), running(13))
	}
	if got := cmdline(10); !reflect.DeepEqual(got, []string{"/bin/fabricd", "--socket", "/s"}) {
		t.Errorf("cmdline %q", got)
	}
	if cmdline(11) != nil {
		t.Error("a zombie has no command line")
	}
	n := Node{Socket: "/s", PID: 10}
	if !agentAlive("", n) || !reflect.DeepEqual(agentPIDs("", n), []int{10}) {
		t.Error("agent 10 not found")
	}
	if n.PID = 12; agentAlive("", n) {
		t.Error("a reused PID is taken for the agent")
	}
}

func TestAgentEnvDropsFabricVariables(t *testing.T) {
	got := agentEnv([]string{"PATH=/bin", "FABRIC_SOCKET=/x", "FABRIC_STATE_DIR=/y", "HOME=/root"})
	if !reflect.DeepEqual(got, []string{"PATH=/bin", "HOME=/root"}) {
		t.Errorf("got %q", got)
	}
}

func TestLogTail(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	var b strings.Builder
	for i := range 100 {
		b.WriteString(strings.Repeat("x", 10) + " line " + string(rune('a'+i%26)) + "\n")
	}
	os.WriteFile(p, []byte(b.String()), 0o600)
	tail := logTail(p)
	lines := strings.Split(tail, "\n")
	if len(lines) != 30 || lines[29] != "xxxxxxxxxx line v" {
		t.Errorf("%d lines, last %q", len(lines), lines[len(lines)-1])
	}
	if logTail(p+"-missing") != "" {
		t.Error("tail of a missing file")
	}
}
