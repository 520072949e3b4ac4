// Package config loads fabricd's configuration: defaults, then the YAML
// config file, then FABRIC_* environment variables, then command-line
// flags, each overriding the one before. Every key is named like its flag
// (state-dir, cluster-join, ...), in the file and, upper-cased with
// underscores, in the environment (FABRIC_STATE_DIR, FABRIC_CLUSTER_JOIN).
//
// The package only produces a validated Config value. It knows nothing
// about what the agent does with it: it opens no sockets, creates no
// directories and touches no kernel state.
package config

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// Sentinel errors; every error from Load and Validate wraps one of them.
var (
	// ErrInvalidConfig: a value is malformed or not allowed.
	ErrInvalidConfig = errors.New("invalid config")
	// ErrUnknownKey: the config file holds a key fabricd does not know
	// (usually a typo, such as state_dir for state-dir).
	ErrUnknownKey = errors.New("unknown config key")
	// ErrConfigFile: the config file cannot be read or parsed.
	ErrConfigFile = errors.New("config file")
)

// DefaultConfigFile is read when neither --config nor FABRIC_CONFIG names a
// file. Unlike an explicitly named file it may be missing.
const DefaultConfigFile = "/etc/fabric/fabric.yaml"

// EnvPrefix is the prefix of the environment variables that set keys.
const EnvPrefix = "FABRIC"

// Datapath modes.
const (
	// DatapathAuto is the eBPF datapath where the host can load it, with a
	// warning and the kernel datapath where it cannot.
	DatapathAuto = "auto"
	// DatapathEBPF is the tc/XDP eBPF datapath; start-up fails without it.
	DatapathEBPF = "ebpf"
	// DatapathKernel uses Linux bridges, routes and nftables.
	DatapathKernel = "kernel"
)

// XDP modes for the uplink program.
const (
	XDPAuto   = "auto"
	XDPNative = "native"
	XDPOff    = "off"
)

// Config is fabricd's configuration. Field tags name the keys used in the
// config file; the same names are the flags.
type Config struct {
	// StateDir holds the agent's persistent state (networks, endpoints).
	StateDir string `mapstructure:"state-dir" yaml:"state-dir"`
	// Socket is the unix socket of the agent's HTTP API.
	Socket string `mapstructure:"socket" yaml:"socket"`
	// NodeName identifies this host in the cluster; defaults to the hostname.
	NodeName string `mapstructure:"node-name" yaml:"node-name"`
	// Datapath is auto, ebpf or kernel; auto means ebpf where the host can load it, else kernel.
	Datapath string `mapstructure:"datapath" yaml:"datapath"`
	// Uplink is the host interface facing the underlay; empty means the
	// interface of the default route.
	Uplink string `mapstructure:"uplink" yaml:"uplink"`
	// MetricsListen is the host:port of the Prometheus endpoint; empty
	// disables it.
	MetricsListen string `mapstructure:"metrics-listen" yaml:"metrics-listen"`
	// ClusterBind is the IP[:port] the gossip layer listens on (port 7946
	// if not given). Empty with no ClusterJoin means no cluster: a
	// single-host fabric without overlay networks.
	ClusterBind string `mapstructure:"cluster-bind" yaml:"cluster-bind"`
	// ClusterJoin lists host[:port] addresses of existing members to join;
	// empty means start a new (possibly single-node) cluster.
	ClusterJoin []string `mapstructure:"cluster-join" yaml:"cluster-join"`
	// ClusterSecretFile holds the keys that encrypt and authenticate
	// gossip (mode 0600). A clustered agent (see NeedsKey) must have one
	// unless ClusterInsecure is set.
	ClusterSecretFile string `mapstructure:"cluster-secret-file" yaml:"cluster-secret-file"`
	// ClusterInsecure lets a clustered agent gossip without a key: anyone
	// who reaches the gossip port can then rewrite the cluster's state.
	// `fabricctl status` warns (and exits 1) while it is on.
	ClusterInsecure bool `mapstructure:"cluster-insecure" yaml:"cluster-insecure"`
	// DockerPlugin is the unix socket where fabricd serves Docker's
	// network and IPAM plugin API; empty (the default) serves none.
	DockerPlugin string `mapstructure:"docker-plugin" yaml:"docker-plugin"`
	// TunnelPort is the UDP port of overlay (VXLAN) traffic, the same on
	// every node.
	TunnelPort int `mapstructure:"tunnel-port" yaml:"tunnel-port"`
	// BPFRoot is the bpffs directory where maps and links are pinned.
	BPFRoot string `mapstructure:"bpf-root" yaml:"bpf-root"`
	// XDP is auto, native or off.
	XDP string `mapstructure:"xdp" yaml:"xdp"`
	// ConntrackMax is the eBPF datapath's connection-table size in
	// entries (two per connection).
	ConntrackMax int `mapstructure:"conntrack-max" yaml:"conntrack-max"`
	// SockRedirect turns on the eBPF datapath's socket redirection for
	// TCP connections from host processes to local sandboxes (off by
	// default: see the README's "Socket redirection").
	SockRedirect bool `mapstructure:"sock-redirect" yaml:"sock-redirect"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `mapstructure:"log-level" yaml:"log-level"`
	// DefaultSubnet is the subnet of the default "bridge" network; empty
	// means the first default pool that collides with nothing on the host.
	DefaultSubnet string `mapstructure:"default-subnet" yaml:"default-subnet"`
	// NoDefaultNetwork stops the agent from creating the "bridge" network.
	NoDefaultNetwork bool `mapstructure:"no-default-network" yaml:"no-default-network"`
	// DNSUpstreams are the IP:port resolvers the embedded DNS forwards
	// other names to; empty means those of /etc/resolv.conf, re-read when
	// it changes.
	DNSUpstreams []string `mapstructure:"dns-upstreams" yaml:"dns-upstreams"`
	// DNSTTL is the TTL of the embedded DNS server's own answers.
	DNSTTL time.Duration `mapstructure:"dns-ttl" yaml:"dns-ttl"`
	// NetNSPrefix is put before a sandbox's name to name its namespace
	// (/var/run/netns/PREFIXNAME), so that several agents on one machine
	// (a lab) each have their own sandbox names.
	NetNSPrefix string `mapstructure:"netns-prefix" yaml:"netns-prefix"`

	// ConfigFile is the file the configuration was read from, empty if
	// none was. Set by Load; not a key.
	ConfigFile string `mapstructure:"-" yaml:"-"`
}

// Defaults returns the configuration used when nothing is set. NodeName is
// the hostname (empty if it cannot be read, which Validate then rejects).
func Defaults() Config {
	host, _ := os.Hostname()
	return Config{
		StateDir:      "/var/lib/fabric",
		Socket:        "/run/fabric/fabricd.sock",
		NodeName:      host,
		Datapath:      DatapathAuto,
		MetricsListen: "127.0.0.1:9475",
		TunnelPort:    4789,
		BPFRoot:       "/sys/fs/bpf/fabric",
		XDP:           XDPAuto,
		ConntrackMax:  262144,
		LogLevel:      "info",
		DNSTTL:        60 * time.Second,
	}
}

// DefaultGossipPort is the cluster gossip port when an address has none.
const DefaultGossipPort = 7946

// Clustered reports whether the agent joins a cluster (gossip on).
func (c Config) Clustered() bool { return c.ClusterBind != "" || len(c.ClusterJoin) > 0 }

// NeedsKey reports whether gossip must be keyed: the agent joins others
// (cluster-join) or listens where others can reach it (a cluster-bind
// that is not a loopback address). A loopback-only cluster is a
// single-host experiment that nobody else can reach.
func (c Config) NeedsKey() bool {
	if len(c.ClusterJoin) > 0 {
		return true
	}
	if c.ClusterBind == "" {
		return false
	}
	bind, err := c.GossipBind()
	return err != nil || !bind.Addr().IsLoopback()
}

// GossipBind returns the address and port gossip listens on: ClusterBind
// with the default port filled in, 0.0.0.0:7946 when only ClusterJoin is set.
func (c Config) GossipBind() (netip.AddrPort, error) {
	if c.ClusterBind == "" {
		return netip.AddrPortFrom(netip.IPv4Unspecified(), DefaultGossipPort), nil
	}
	return netip.ParseAddrPort(WithDefaultPort(c.ClusterBind))
}

// WithDefaultPort appends the default gossip port to an address without one.
func WithDefaultPort(addr string) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	return net.JoinHostPort(strings.Trim(addr, "[]"), strconv.Itoa(DefaultGossipPort))
}

// GossipSeeds returns ClusterJoin with the default port filled in.
func (c Config) GossipSeeds() []string {
	out := make([]string, len(c.ClusterJoin))
	for i, j := range c.ClusterJoin {
		out[i] = WithDefaultPort(j)
	}
	return out
}

// SlogLevel returns LogLevel as a slog.Level (info for unknown values,
// which Validate rejects anyway).
func (c Config) SlogLevel() slog.Level {
	switch c.LogLevel {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// Keys, named like the flags.
const (
	keyConfig            = "config" // flag only, not a key of the file
	keyStateDir          = "state-dir"
	keySocket            = "socket"
	keyNodeName          = "node-name"
	keyDatapath          = "datapath"
	keyUplink            = "uplink"
	keyMetricsListen     = "metrics-listen"
	keyClusterBind       = "cluster-bind"
	keyClusterJoin       = "cluster-join"
	keyClusterSecretFile = "cluster-secret-file"
	keyClusterInsecure   = "cluster-insecure"
	keyDockerPlugin      = "docker-plugin"
	keyTunnelPort        = "tunnel-port"
	keyBPFRoot           = "bpf-root"
	keyXDP               = "xdp"
	keyConntrackMax      = "conntrack-max"
	keySockRedirect      = "sock-redirect"
	keyLogLevel          = "log-level"
	keyDefaultSubnet     = "default-subnet"
	keyNoDefaultNetwork  = "no-default-network"
	keyDNSUpstreams      = "dns-upstreams"
	keyDNSTTL            = "dns-ttl"
	keyNetNSPrefix       = "netns-prefix"
)

// defaultValues maps every key to its default; its keys are the set of
// keys the config file may contain.
func defaultValues() map[string]any {
	d := Defaults()
	return map[string]any{
		keyStateDir:          d.StateDir,
		keySocket:            d.Socket,
		keyNodeName:          d.NodeName,
		keyDatapath:          d.Datapath,
		keyUplink:            d.Uplink,
		keyMetricsListen:     d.MetricsListen,
		keyClusterBind:       d.ClusterBind,
		keyClusterJoin:       []string{},
		keyClusterSecretFile: d.ClusterSecretFile,
		keyClusterInsecure:   d.ClusterInsecure,
		keyDockerPlugin:      d.DockerPlugin,
		keyTunnelPort:        d.TunnelPort,
		keyBPFRoot:           d.BPFRoot,
		keyXDP:               d.XDP,
		keyConntrackMax:      d.ConntrackMax,
		keySockRedirect:      d.SockRedirect,
		keyLogLevel:          d.LogLevel,
		keyDefaultSubnet:     d.DefaultSubnet,
		keyNoDefaultNetwork:  d.NoDefaultNetwork,
		keyDNSUpstreams:      []string{},
		keyDNSTTL:            d.DNSTTL,
		keyNetNSPrefix:       d.NetNSPrefix,
	}
}
