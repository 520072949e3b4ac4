package config

import (
	"fmt"
	"time"

	"github.com/spf13/pflag"
)

// flagHelp is the help of every key's flag, in the order --help lists
// them. The flag's type and default are those of the key in
// defaultValues; its help ends with the key's environment variable.
var flagHelp = []struct{ key, help string }{
	{keyStateDir,
		"directory for the agent's persistent state: networks, endpoints, address leases"},
	{keySocket,
		"unix socket of the agent API, used by fabricctl"},
	{keyNodeName,
		"name of this host in the cluster; must be unique, up to 63 characters of A-Z a-z 0-9 . _ -; the hostname if unset"},
	{keyDatapath,
		"packet path: ebpf (tc/XDP programs, no bridge; fail if the host cannot load them), kernel (Linux bridge, routes, nftables) or auto (ebpf, else kernel with a warning)"},
	{keyUplink,
		"host interface facing the underlay, for overlay traffic and XDP (default: the interface of the default route)"},
	{keyMetricsListen,
		"host:port for Prometheus metrics at /metrics; empty disables it"},
	{keyClusterBind,
		"IP[:port] for cluster gossip, TCP and UDP, port 7946 if not given; other nodes must reach it and it is the address overlay tunnels are sent to (unless 0.0.0.0). Empty (and no --cluster-join): no cluster, a single-host fabric"},
	{keyClusterJoin,
		"comma-separated host[:port] of cluster members to join (port 7946 if not given), retried until one answers; none starts a new cluster"},
	{keyClusterSecretFile,
		"`FILE` of base64 gossip keys (mode 0600; make one with 'fabricctl cluster key generate FILE'), the same on every node: gossip is encrypted and authenticated; required when clustered (cluster-join, or a cluster-bind that is not loopback) unless --cluster-insecure"},
	{keyClusterInsecure,
		"allow a clustered agent without --cluster-secret-file: gossip in clear text and unauthenticated, so anyone reaching the gossip port can rewrite the cluster; 'fabricctl status' warns"},
	{keyDockerPlugin,
		"serve Docker's network and IPAM plugin API (driver and IPAM \"fabric\") on this unix socket, usually /run/docker/plugins/fabric.sock; empty serves none"},
	{keyTunnelPort,
		"UDP port of overlay (VXLAN) traffic; must be the same on every node"},
	{keyBPFRoot,
		"bpffs directory where eBPF maps and links are pinned so a restart drops no traffic"},
	{keyConntrackMax,
		"eBPF datapath: connection-table size in entries, two per NAT connection (changing it drops NAT connections once)"},
	{keySockRedirect,
		"eBPF datapath: move the bytes of TCP connections from host processes to local sandboxes (published ports from 127.0.0.1) from socket to socket, past both TCP stacks; no flow control and no splice(2) on them (see README)"},
	{keyXDP,
		"XDP on the uplink: auto (native if the driver supports it, else off), native (fail if unsupported) or off"},
	{keyLogLevel,
		"log level: debug, info, warn or error"},
	{keyDefaultSubnet,
		"IPv4 subnet of the default bridge network, e.g. 172.17.0.0/16 (default: the first of 172.17-31.0.0/16, 192.168.0-240.0/20 that overlaps no host route)"},
	{keyNoDefaultNetwork,
		"do not create the default bridge network"},
	{keyDNSUpstreams,
		"comma-separated IP:port resolvers the sandboxes' embedded DNS (127.0.0.11) forwards other names to; default: the host's /etc/resolv.conf, re-read when it changes"},
	{keyDNSTTL,
		"TTL of the embedded DNS server's answers for sandbox names"},
	{keyNetNSPrefix,
		"prefix of sandboxes' namespace names (/var/run/netns/PREFIXNAME), for several agents on one machine; empty: NAME, so 'ip netns exec NAME' works"},
}

// RegisterFlags defines fabricd's flags on fs. Load reads them back; a flag
// only overrides the file and environment when it is given explicitly.
func RegisterFlags(fs *pflag.FlagSet) {
	fs.String(keyConfig, DefaultConfigFile,
		"YAML config file; its keys are the flag names (state-dir: /srv/fabric). The default file may be missing, a named one may not (env FABRIC_CONFIG)")
	defaults := defaultValues()
	for _, f := range flagHelp {
		usage := f.help + fmt.Sprintf(" (env %s)", envName(f.key))
		switch d := defaults[f.key].(type) {
		case string:
			fs.String(f.key, d, usage)
		case bool:
			fs.Bool(f.key, d, usage)
		case int:
			fs.Int(f.key, d, usage)
		case time.Duration:
			fs.Duration(f.key, d, usage)
		case []string:
			fs.StringSlice(f.key, nil, usage)
		default:
			panic(fmt.Sprintf("config: no flag for key %s of type %T", f.key, d))
		}
	}
}
