package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// isolate keeps the machine's environment and /etc/fabric out of a test.
func isolate(t *testing.T) {
	t.Helper()
	for key := range defaultValues() {
		t.Setenv(envName(key), "")
	}
	t.Setenv(envName(keyConfig), "")
	old := defaultConfigFile
	defaultConfigFile = filepath.Join(t.TempDir(), "absent.yaml")
	t.Cleanup(func() { defaultConfigFile = old })
}

// flagSet returns fabricd's flags parsed from args.
func flagSet(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("fabricd", pflag.ContinueOnError)
	RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	return fs
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestDefaults(t *testing.T) {
	isolate(t)
	for _, fs := range []*pflag.FlagSet{flagSet(t), nil} {
		c, err := Load(fs)
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		want := Defaults()
		if !reflect.DeepEqual(c, want) {
			t.Errorf("Load() with nothing set =\n%+v\nwant\n%+v", c, want)
		}
	}
	d := Defaults()
	host, _ := os.Hostname()
	checks := []struct{ name, got, want string }{
		{"state-dir", d.StateDir, "/var/lib/fabric"},
		{"socket", d.Socket, "/run/fabric/fabricd.sock"},
		{"node-name", d.NodeName, host},
		{"datapath", d.Datapath, "auto"},
		{"metrics-listen", d.MetricsListen, "127.0.0.1:9475"},
		{"cluster-bind", d.ClusterBind, ""},
		{"bpf-root", d.BPFRoot, "/sys/fs/bpf/fabric"},
		{"xdp", d.XDP, "auto"},
		{"log-level", d.LogLevel, "info"},
		{"uplink", d.Uplink, ""},
		{"default-subnet", d.DefaultSubnet, ""},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("default %s = %q, want %q", c.name, c.got, c.want)
		}
	}
	if d.TunnelPort != 4789 {
		t.Errorf("default tunnel-port = %d, want 4789", d.TunnelPort)
	}
	if d.Clustered() {
		t.Error("the defaults turn clustering on; want a single-host fabric")
	}
	if d.NoDefaultNetwork || len(d.ClusterJoin) != 0 {
		t.Errorf("default no-default-network=%v cluster-join=%v", d.NoDefaultNetwork, d.ClusterJoin)
	}
}

func TestPrecedence(t *testing.T) {
	const file = `
state-dir: /file/state
socket: /file/sock
log-level: warn
cluster-join: [10.0.0.1:7946, 10.0.0.2:7946]
cluster-secret-file: /etc/fabric/gossip.key
no-default-network: true
default-subnet: 10.50.0.0/16
`
	tests := []struct {
		name  string
		env   map[string]string
		args  []string
		check func(t *testing.T, c Config)
	}{
		{
			name: "file over defaults",
			check: func(t *testing.T, c Config) {
				eq(t, "state-dir", c.StateDir, "/file/state")
				eq(t, "log-level", c.LogLevel, "warn")
				eq(t, "datapath", c.Datapath, "auto") // not in file: default
				eqList(t, c.ClusterJoin, "10.0.0.1:7946", "10.0.0.2:7946")
				if !c.NoDefaultNetwork {
					t.Error("no-default-network from file not applied")
				}
			},
		},
		{
			name: "env over file",
			env: map[string]string{
				"FABRIC_STATE_DIR":          "/env/state",
				"FABRIC_CLUSTER_JOIN":       "10.9.0.1:7946, node2.example:7946,",
				"FABRIC_NO_DEFAULT_NETWORK": "false",
				"FABRIC_DEFAULT_SUBNET":     "10.60.0.0/16",
			},
			check: func(t *testing.T, c Config) {
				eq(t, "state-dir", c.StateDir, "/env/state")
				eq(t, "socket", c.Socket, "/file/sock") // env not set: file
				eq(t, "default-subnet", c.DefaultSubnet, "10.60.0.0/16")
				eqList(t, c.ClusterJoin, "10.9.0.1:7946", "node2.example:7946")
				if c.NoDefaultNetwork {
					t.Error("FABRIC_NO_DEFAULT_NETWORK=false did not override the file")
				}
			},
		},
		{
			name: "flag over env and file",
			env:  map[string]string{"FABRIC_STATE_DIR": "/env/state", "FABRIC_SOCKET": "/env/sock"},
			args: []string{"--state-dir=/flag/state", "--cluster-join=10.7.0.1:1,10.7.0.2:2", "--no-default-network=false"},
			check: func(t *testing.T, c Config) {
				eq(t, "state-dir", c.StateDir, "/flag/state")
				eq(t, "socket", c.Socket, "/env/sock") // flag not set: env
				eq(t, "log-level", c.LogLevel, "warn") // neither: file
				eqList(t, c.ClusterJoin, "10.7.0.1:1", "10.7.0.2:2")
				if c.NoDefaultNetwork {
					t.Error("--no-default-network=false did not override the file")
				}
			},
		},
		{
			name: "flag set to its default still wins",
			env:  map[string]string{"FABRIC_LOG_LEVEL": "debug"},
			args: []string{"--log-level=info"},
			check: func(t *testing.T, c Config) {
				eq(t, "log-level", c.LogLevel, "info")
			},
		},
		{
			name: "unset flags do not override with their defaults",
			env:  map[string]string{"FABRIC_LOG_LEVEL": "error"},
			check: func(t *testing.T, c Config) {
				eq(t, "log-level", c.LogLevel, "error")
				eq(t, "metrics-listen", c.MetricsListen, "127.0.0.1:9475")
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			isolate(t)
			path := writeFile(t, "fabric.yaml", file)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			c, err := Load(flagSet(t, append([]string{"--config", path}, tt.args...)...))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if c.ConfigFile != path {
				t.Errorf("ConfigFile = %q, want %q", c.ConfigFile, path)
			}
			tt.check(t, c)
		})
	}
}

func eq(t *testing.T, key, got, want string) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %q, want %q", key, got, want)
	}
}

func eqList(t *testing.T, got []string, want ...string) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("cluster-join = %q, want %q", got, want)
	}
}

func TestConfigFileSelection(t *testing.T) {
	isolate(t)
	flagFile := writeFile(t, "flag.yaml", "node-name: from-flag-file\n")
	envFile := writeFile(t, "env.yaml", "node-name: from-env-file\n")
	defFile := writeFile(t, "default.yaml", "node-name: from-default-file\n")
	missing := filepath.Join(t.TempDir(), "missing.yaml")

	tests := []struct {
		name      string
		def       string
		envConfig string
		args      []string
		wantNode  string
		wantErr   error
	}{
		{"default file read", defFile, "", nil, "from-default-file", nil},
		{"default file missing is fine", missing, "", nil, Defaults().NodeName, nil},
		{"FABRIC_CONFIG over default", defFile, envFile, nil, "from-env-file", nil},
		{"--config over FABRIC_CONFIG", defFile, envFile, []string{"--config", flagFile}, "from-flag-file", nil},
		{"missing --config", defFile, "", []string{"--config", missing}, "", ErrConfigFile},
		{"missing FABRIC_CONFIG", defFile, missing, nil, "", ErrConfigFile},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defaultConfigFile = tt.def
			t.Setenv("FABRIC_CONFIG", tt.envConfig)
			c, err := Load(flagSet(t, tt.args...))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Load error = %v, want %v", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), missing) {
					t.Errorf("error %q does not name the file", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			eq(t, "node-name", c.NodeName, tt.wantNode)
		})
	}
}

func TestBadConfigFile(t *testing.T) {
	tests := []struct {
		name     string
		file     string
		content  string
		wantErr  error
		wantMsgs []string
	}{
		{"malformed yaml", "fabric.yaml", "state-dir: [unclosed\n", ErrConfigFile, nil},
		{"tab indentation", "fabric.yaml", "state-dir: /a\n\tsocket: /b\n", ErrConfigFile, nil},
		{"not a mapping", "fabric.yaml", "- a\n- b\n", ErrConfigFile, nil},
		{"unknown key", "fabric.yaml", "state-dir: /a\nfoo: 1\n", ErrUnknownKey, []string{`"foo"`, "known keys:", "state-dir"}},
		{"underscore typo", "fabric.yaml", "state_dir: /a\n", ErrUnknownKey, []string{`"state_dir" (did you mean "state-dir"?)`}},
		{"nested key", "fabric.yaml", "cluster:\n  bind: 1.2.3.4:7946\n", ErrUnknownKey, []string{`"cluster.bind"`}},
		{"config key in file", "fabric.yaml", "config: /etc/other.yaml\n", ErrUnknownKey, []string{`"config"`}},
		{"malformed json", "fabric.json", `{"state-dir": `, ErrConfigFile, nil},
		{"wrong type", "fabric.yaml", "no-default-network: maybe\n", ErrInvalidConfig, []string{"no-default-network"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			isolate(t)
			path := writeFile(t, tt.file, tt.content)
			_, err := Load(flagSet(t, "--config", path))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Load error = %v, want %v", err, tt.wantErr)
			}
			msgs := tt.wantMsgs
			if tt.wantErr != ErrInvalidConfig {
				msgs = append(msgs, path)
			}
			for _, m := range msgs {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not contain %q", err, m)
				}
			}
		})
	}
}

func TestConfigFileFormats(t *testing.T) {
	isolate(t)
	for _, f := range []struct{ name, content string }{
		{"fabric.yaml", "socket: /x/s.sock\n"},
		{"fabric.yml", "socket: /x/s.sock\n"},
		{"fabric.conf", "socket: /x/s.sock\n"}, // unknown extension: YAML
		{"fabric", "socket: /x/s.sock\n"},
		{"fabric.json", `{"socket": "/x/s.sock"}`},
		{"empty.yaml", ""},
	} {
		t.Run(f.name, func(t *testing.T) {
			c, err := Load(flagSet(t, "--config", writeFile(t, f.name, f.content)))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := "/x/s.sock"
			if f.content == "" {
				want = Defaults().Socket
			}
			eq(t, "socket", c.Socket, want)
		})
	}
}

func TestLoadValidates(t *testing.T) {
	isolate(t)
	t.Setenv("FABRIC_DATAPATH", "fast")
	_, err := Load(flagSet(t))
	if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), `"fast" is not one of`) {
		t.Fatalf("Load error = %v, want the datapath validation error", err)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(c *Config)
		wantMsg []string // all must appear; none means valid
	}{
		{"defaults", func(c *Config) {}, nil},
		{"full valid", func(c *Config) {
			c.Datapath = "auto"
			c.XDP = "native"
			c.LogLevel = "debug"
			c.Uplink = "eth0"
			c.MetricsListen = ":9475"
			c.ClusterBind = "[::]:7946"
			c.ClusterJoin = []string{"10.0.0.2:7946", "node-b.lab:7946", "[fd00::2]:7946"}
			c.ClusterSecretFile = "/etc/fabric/gossip.key"
			c.DefaultSubnet = "10.88.0.0/16"
			c.NodeName = "node_1.lab-a"
		}, nil},
		{"metrics disabled", func(c *Config) { c.MetricsListen = "" }, nil},
		{"datapath ebpf", func(c *Config) { c.Datapath = "ebpf" }, nil},
		{"datapath unknown", func(c *Config) { c.Datapath = "fast" }, []string{"datapath", `"fast"`, "auto, kernel, ebpf"}},
		{"xdp unknown", func(c *Config) { c.XDP = "generic" }, []string{"xdp", `"generic"`, "auto, native, off"}},
		{"log-level unknown", func(c *Config) { c.LogLevel = "verbose" }, []string{"log-level", "debug, info, warn, error"}},
		{"log-level case", func(c *Config) { c.LogLevel = "INFO" }, []string{"log-level"}},
		{"state-dir relative", func(c *Config) { c.StateDir = "var/lib/fabric" }, []string{"state-dir", "absolute path"}},
		{"state-dir empty", func(c *Config) { c.StateDir = "" }, []string{"state-dir", "absolute path"}},
		{"socket relative", func(c *Config) { c.Socket = "fabricd.sock" }, []string{"socket", "absolute path"}},
		{"socket too long", func(c *Config) { c.Socket = "/" + strings.Repeat("s", 120) }, []string{"socket", "limited to 107"}},
		{"bpf-root relative", func(c *Config) { c.BPFRoot = "./bpf" }, []string{"bpf-root", "absolute path"}},
		{"node-name empty", func(c *Config) { c.NodeName = "" }, []string{"node-name", "is empty"}},
		{"node-name too long", func(c *Config) { c.NodeName = strings.Repeat("n", 64) }, []string{"node-name", "at most 63"}},
		{"node-name bad char", func(c *Config) { c.NodeName = "node 1" }, []string{"node-name", "' '", "A-Z a-z 0-9 . _ -"}},
		{"uplink too long", func(c *Config) { c.Uplink = "a-very-long-ifname" }, []string{"uplink", "longer than 15"}},
		{"uplink slash", func(c *Config) { c.Uplink = "eth0/1" }, []string{"uplink", "not an interface name"}},
		{"metrics no port", func(c *Config) { c.MetricsListen = "127.0.0.1" }, []string{"metrics-listen", "not HOST:PORT"}},
		{"metrics bad port", func(c *Config) { c.MetricsListen = "127.0.0.1:http" }, []string{"metrics-listen", "port"}},
		{"metrics port range", func(c *Config) { c.MetricsListen = ":70000" }, []string{"metrics-listen", "0 to 65535"}},
		{"cluster-bind hostname", func(c *Config) { c.ClusterBind = "myhost:7946" }, []string{"cluster-bind", "not an IP address"}},
		{"cluster-bind no host", func(c *Config) { c.ClusterBind = ":7946" }, []string{"cluster-bind", "no host"}},
		{"cluster-bind port 0", func(c *Config) { c.ClusterBind = "0.0.0.0:0" }, []string{"cluster-bind", "1 to 65535"}},
		{"cluster-bind hostname no port", func(c *Config) { c.ClusterBind = "myhost" }, []string{"cluster-bind", "not an IP address"}},
		{"cluster-join bad port", func(c *Config) { c.ClusterJoin = []string{"10.0.0.2:x"} }, []string{"cluster-join", `port "x"`}},
		{"tunnel-port 0", func(c *Config) { c.TunnelPort = 0 }, []string{"tunnel-port", "1 to 65535"}},
		{"conntrack-max too small", func(c *Config) { c.ConntrackMax = 10 }, []string{"conntrack-max", "64 to"}},
		{"tunnel-port too big", func(c *Config) { c.TunnelPort = 70000 }, []string{"tunnel-port", "1 to 65535"}},
		{"cluster-join bad host", func(c *Config) { c.ClusterJoin = []string{"10.0.0.2:7946", "bad_host!:7946"} }, []string{"cluster-join", "bad_host!"}},
		{"default-subnet not cidr", func(c *Config) { c.DefaultSubnet = "10.0.0.0" }, []string{"default-subnet", "not an IPv4 CIDR"}},
		{"default-subnet host bits", func(c *Config) { c.DefaultSubnet = "10.0.0.5/24" }, []string{"default-subnet", "use 10.0.0.0/24"}},
		{"default-subnet ipv6", func(c *Config) { c.DefaultSubnet = "fd00::/64" }, []string{"default-subnet", "only IPv4"}},
		{"several at once", func(c *Config) { c.XDP = "x"; c.LogLevel = "y" }, []string{"xdp", "log-level"}},
		{"docker-plugin relative", func(c *Config) { c.DockerPlugin = "fabric.sock" }, []string{"docker-plugin", "absolute path"}},
		{"cluster-secret-file relative", func(c *Config) { c.ClusterSecretFile = "gossip.key" }, []string{"cluster-secret-file", "absolute path"}},
		{"dns-upstreams no port", func(c *Config) { c.DNSUpstreams = []string{"10.0.0.2"} }, []string{"dns-upstreams", "IPv4 IP:port"}},
		{"dns-ttl too short", func(c *Config) { c.DNSTTL = time.Millisecond }, []string{"dns-ttl", "1s to 24h"}},
		{"netns-prefix leading dot", func(c *Config) { c.NetNSPrefix = ".x" }, []string{"netns-prefix", "not starting with"}},
		{"one of every group", func(c *Config) {
			c.Datapath, c.Uplink, c.ClusterBind, c.DNSTTL = "fast", "eth0/1", ":7946", 0
		}, []string{"datapath", "uplink", "cluster-bind", "dns-ttl"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Defaults()
			c.NodeName = "node1" // independent of the test machine's hostname
			tt.mutate(&c)
			err := c.Validate()
			if len(tt.wantMsg) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("Validate error = %v, want ErrInvalidConfig", err)
			}
			for _, m := range tt.wantMsg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not contain %q", err, m)
				}
			}
		})
	}
}

func TestDefaultSubnetPrefix(t *testing.T) {
	if p := (Config{DefaultSubnet: "10.1.0.0/16"}).DefaultSubnetPrefix(); p.String() != "10.1.0.0/16" {
		t.Errorf("DefaultSubnetPrefix = %s", p)
	}
	if p := (Config{}).DefaultSubnetPrefix(); p.IsValid() {
		t.Errorf("empty DefaultSubnet gave %s", p)
	}
}

func TestRegisterFlags(t *testing.T) {
	fs := flagSet(t)
	for key := range defaultValues() {
		f := fs.Lookup(key)
		if f == nil {
			t.Errorf("no flag --%s", key)
			continue
		}
		if !strings.Contains(f.Usage, envName(key)) {
			t.Errorf("--%s usage does not mention %s: %q", key, envName(key), f.Usage)
		}
	}
	if f := fs.Lookup("config"); f == nil || f.DefValue != DefaultConfigFile {
		t.Errorf("--config missing or default not %s", DefaultConfigFile)
	}
	// One flag per key, typed and defaulted as the key (flagHelp is a
	// table: a key listed twice or unknown must not get through).
	seen := map[string]bool{}
	for _, f := range flagHelp {
		if _, ok := defaultValues()[f.key]; !ok || seen[f.key] {
			t.Errorf("flagHelp: key %s unknown or listed twice", f.key)
		}
		seen[f.key] = true
	}
	for key, want := range map[string]string{keyTunnelPort: "4789", keyDNSTTL: "1m0s", keyNoDefaultNetwork: "false", keyClusterJoin: "[]", keyDatapath: DatapathAuto} {
		if f := fs.Lookup(key); f == nil || f.DefValue != want {
			t.Errorf("--%s default %v, want %s", key, f, want)
		}
	}
}

func TestGossipAddresses(t *testing.T) {
	c := Defaults()
	c.ClusterJoin = []string{"10.0.0.2", "10.0.0.3:8000", "node-b.lab"}
	c.ClusterSecretFile = "/etc/fabric/gossip.key"
	if !c.Clustered() {
		t.Fatal("cluster-join alone must turn clustering on")
	}
	bind, err := c.GossipBind()
	if err != nil || bind.String() != "0.0.0.0:7946" {
		t.Errorf("GossipBind with no cluster-bind = %v, %v; want 0.0.0.0:7946", bind, err)
	}
	got := c.GossipSeeds()
	want := []string{"10.0.0.2:7946", "10.0.0.3:8000", "node-b.lab:7946"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("GossipSeeds = %v, want %v", got, want)
	}
	for in, want := range map[string]string{"10.1.2.3": "10.1.2.3:7946", "10.1.2.3:9000": "10.1.2.3:9000"} {
		c.ClusterBind = in
		if err := c.Validate(); err != nil {
			t.Errorf("cluster-bind %q refused: %v", in, err)
		}
		if b, err := c.GossipBind(); err != nil || b.String() != want {
			t.Errorf("GossipBind(%q) = %v, %v; want %s", in, b, err, want)
		}
	}
}

// A clustered agent needs a key unless it is told to run insecure; a
// loopback-only cluster nobody else can reach does not.
func TestClusterNeedsKey(t *testing.T) {
	for _, tc := range []struct {
		name     string
		set      func(c *Config)
		wantErr  bool
		needsKey bool
	}{
		{"single host", func(c *Config) {}, false, false},
		{"loopback bind", func(c *Config) { c.ClusterBind = "127.0.0.1:7946" }, false, false},
		{"underlay bind", func(c *Config) { c.ClusterBind = "10.0.0.1" }, true, true},
		{"wildcard bind", func(c *Config) { c.ClusterBind = "0.0.0.0:7946" }, true, true},
		{"join", func(c *Config) { c.ClusterJoin = []string{"10.0.0.2"} }, true, true},
		{"loopback bind and join", func(c *Config) { c.ClusterBind = "127.0.0.1"; c.ClusterJoin = []string{"127.0.0.1:7947"} }, true, true},
		{"join with key", func(c *Config) { c.ClusterJoin = []string{"10.0.0.2"}; c.ClusterSecretFile = "/k" }, false, true},
		{"join insecure", func(c *Config) { c.ClusterJoin = []string{"10.0.0.2"}; c.ClusterInsecure = true }, false, true},
		{"relative key path", func(c *Config) { c.ClusterJoin = []string{"10.0.0.2"}; c.ClusterSecretFile = "gossip.key" }, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Defaults()
			c.NodeName = "n1"
			tc.set(&c)
			if got := c.NeedsKey(); got != tc.needsKey {
				t.Errorf("NeedsKey = %v, want %v", got, tc.needsKey)
			}
			err := c.Validate()
			if (err != nil) != tc.wantErr {
				t.Fatalf("Validate = %v, want error %v", err, tc.wantErr)
			}
			if err != nil && tc.name != "relative key path" {
				for _, want := range []string{"cluster-secret-file", "fabricctl cluster key generate", "cluster-insecure"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not mention %q", err, want)
					}
				}
			}
		})
	}
	// The key is a config key and an environment variable too.
	isolate(t)
	t.Setenv("FABRIC_CLUSTER_INSECURE", "true")
	t.Setenv("FABRIC_CLUSTER_JOIN", "10.0.0.2")
	c, err := Load(flagSet(t))
	if err != nil || !c.ClusterInsecure {
		t.Fatalf("FABRIC_CLUSTER_INSECURE: %+v, %v", c.ClusterInsecure, err)
	}
}
