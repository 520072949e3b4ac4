package config

import (
	"fmt"

	"github.com/spf13/pflag"
)

// RegisterFlags defines fabricd's flags on fs. Load reads them back; a flag
// only overrides the file and environment when it is given explicitly.
func RegisterFlags(fs *pflag.FlagSet) {
	d := Defaults()
	env := func(key string) string { return fmt.Sprintf(" (env %s)", envName(key)) }

	fs.String(keyConfig, DefaultConfigFile,
		"YAML config file; its keys are the flag names (state-dir: /srv/fabric). The default file may be missing, a named one may not (env FABRIC_CONFIG)")
	fs.String(keyStateDir, d.StateDir,
		"directory for the agent's persistent state: networks, endpoints, address leases"+env(keyStateDir))
	fs.String(keySocket, d.Socket,
		"unix socket of the agent API, used by fabricctl"+env(keySocket))
	fs.String(keyNodeName, d.NodeName,
		"name of this host in the cluster; must be unique, up to 63 characters of A-Z a-z 0-9 . _ -; the hostname if unset"+env(keyNodeName))
	fs.String(keyDatapath, d.Datapath,
		"packet path: ebpf (tc/XDP programs, no bridge; fail if the host cannot load them), kernel (Linux bridge, routes, nftables) or auto (ebpf, else kernel with a warning)"+env(keyDatapath))
	fs.String(keyUplink, d.Uplink,
		"host interface facing the underlay, for overlay traffic and XDP (default: the interface of the default route)"+env(keyUplink))
	fs.String(keyMetricsListen, d.MetricsListen,
		"host:port for Prometheus metrics at /metrics; empty disables it"+env(keyMetricsListen))
	fs.String(keyClusterBind, d.ClusterBind,
		"IP[:port] for cluster gossip, TCP and UDP, port 7946 if not given; other nodes must reach it and it is the address overlay tunnels are sent to (unless 0.0.0.0). Empty (and no --cluster-join): no cluster, a single-host fabric"+env(keyClusterBind))
	fs.StringSlice(keyClusterJoin, nil,
		"comma-separated host[:port] of cluster members to join (port 7946 if not given), retried until one answers; none starts a new cluster"+env(keyClusterJoin))
	fs.String(keyClusterSecretFile, d.ClusterSecretFile,
		"`FILE` of base64 gossip keys (mode 0600; make one with 'fabricctl cluster key generate FILE'), the same on every node: gossip is encrypted and authenticated; required when clustered (cluster-join, or a cluster-bind that is not loopback) unless --cluster-insecure"+env(keyClusterSecretFile))
	fs.Bool(keyClusterInsecure, d.ClusterInsecure,
		"allow a clustered agent without --cluster-secret-file: gossip in clear text and unauthenticated, so anyone reaching the gossip port can rewrite the cluster; 'fabricctl status' warns"+env(keyClusterInsecure))
	fs.String(keyDockerPlugin, d.DockerPlugin,
		"serve Docker's network and IPAM plugin API (driver and IPAM \"fabric\") on this unix socket, usually /run/docker/plugins/fabric.sock; empty serves none"+env(keyDockerPlugin))
	fs.Int(keyTunnelPort, d.TunnelPort,
		"UDP port of overlay (VXLAN) traffic; must be the same on every node"+env(keyTunnelPort))
	fs.String(keyBPFRoot, d.BPFRoot,
		"bpffs directory where eBPF maps and links are pinned so a restart drops no traffic"+env(keyBPFRoot))
	fs.Int(keyConntrackMax, d.ConntrackMax,
		"eBPF datapath: connection-table size in entries, two per NAT connection (changing it drops NAT connections once)"+env(keyConntrackMax))
	fs.Bool(keySockRedirect, d.SockRedirect,
		"eBPF datapath: move the bytes of TCP connections from host processes to local sandboxes (published ports from 127.0.0.1) from socket to socket, past both TCP stacks; no flow control and no splice(2) on them (see README)"+env(keySockRedirect))
	fs.String(keyXDP, d.XDP,
		"XDP on the uplink: auto (native if the driver supports it, else off), native (fail if unsupported) or off"+env(keyXDP))
	fs.String(keyLogLevel, d.LogLevel,
		"log level: debug, info, warn or error"+env(keyLogLevel))
	fs.String(keyDefaultSubnet, d.DefaultSubnet,
		"IPv4 subnet of the default bridge network, e.g. 172.17.0.0/16 (default: the first of 172.17-31.0.0/16, 192.168.0-240.0/20 that overlaps no host route)"+env(keyDefaultSubnet))
	fs.Bool(keyNoDefaultNetwork, d.NoDefaultNetwork,
		"do not create the default bridge network"+env(keyNoDefaultNetwork))
	fs.StringSlice(keyDNSUpstreams, nil,
		"comma-separated IP:port resolvers the sandboxes' embedded DNS (127.0.0.11) forwards other names to; default: the host's /etc/resolv.conf, re-read when it changes"+env(keyDNSUpstreams))
	fs.Duration(keyDNSTTL, d.DNSTTL,
		"TTL of the embedded DNS server's answers for sandbox names"+env(keyDNSTTL))
	fs.String(keyNetNSPrefix, d.NetNSPrefix,
		"prefix of sandboxes' namespace names (/var/run/netns/PREFIXNAME), for several agents on one machine; empty: NAME, so 'ip netns exec NAME' works"+env(keyNetNSPrefix))
}
