package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/ipam"
)

// Limits imposed by the kernel and by cluster naming.
const (
	maxNodeName   = 63  // a DNS label; node names end up in DNS and link names
	maxIfaceName  = 15  // IFNAMSIZ - 1
	maxSocketPath = 107 // sizeof(sockaddr_un.sun_path) - 1
	// maxNetNSPrefix leaves room for a sandbox name in a namespace name.
	maxNetNSPrefix = 40
)

var (
	datapaths = []string{DatapathAuto, DatapathKernel, DatapathEBPF}
	xdpModes  = []string{XDPAuto, XDPNative, XDPOff}
	logLevels = []string{"debug", "info", "warn", "error"}
)

// Validate checks every value and reports all problems at once, each
// naming its key and what is allowed. Every error wraps ErrInvalidConfig.
func (c Config) Validate() error {
	var p problems
	c.checkLocal(&p)
	c.checkNetwork(&p)
	c.checkCluster(&p)
	c.checkDNS(&p)
	return errors.Join(p...)
}

// problems collects what Validate finds, in the order it checks.
type problems []error

func (p *problems) bad(key, format string, args ...any) {
	*p = append(*p, fmt.Errorf("%w: %s: %s", ErrInvalidConfig, key, fmt.Sprintf(format, args...)))
}

// checkLocal checks the agent's own paths, names and choices.
func (c Config) checkLocal(p *problems) {
	for _, f := range []struct{ key, val string }{
		{keyStateDir, c.StateDir},
		{keySocket, c.Socket},
		{keyBPFRoot, c.BPFRoot},
	} {
		if !filepath.IsAbs(f.val) {
			p.bad(f.key, "%q is not an absolute path", f.val)
		}
	}
	if len(c.Socket) > maxSocketPath {
		p.bad(keySocket, "path is %d bytes long; unix socket paths are limited to %d", len(c.Socket), maxSocketPath)
	}

	if err := checkNodeName(c.NodeName); err != "" {
		p.bad(keyNodeName, "%s", err)
	}

	if c.NetNSPrefix != "" {
		if len(c.NetNSPrefix) > maxNetNSPrefix || strings.TrimLeft(c.NetNSPrefix, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") != "" || c.NetNSPrefix[0] == '-' || c.NetNSPrefix[0] == '.' {
			p.bad(keyNetNSPrefix, "%q must be up to %d letters, digits, '-', '_' or '.', not starting with '-' or '.'", c.NetNSPrefix, maxNetNSPrefix)
		}
	}
	for _, f := range []struct {
		key, val string
		allowed  []string
	}{
		{keyDatapath, c.Datapath, datapaths},
		{keyXDP, c.XDP, xdpModes},
		{keyLogLevel, c.LogLevel, logLevels},
	} {
		if !slices.Contains(f.allowed, f.val) {
			p.bad(f.key, "%q is not one of %s", f.val, strings.Join(f.allowed, ", "))
		}
	}
}

// checkNetwork checks the uplink, the metrics listener and the Docker
// plugin socket.
func (c Config) checkNetwork(p *problems) {
	if c.Uplink != "" {
		if err := checkIfaceName(c.Uplink); err != "" {
			p.bad(keyUplink, "%s", err)
		}
	}

	if c.MetricsListen != "" {
		if err := checkHostPort(c.MetricsListen, true, true, 0); err != "" {
			p.bad(keyMetricsListen, "%s (for example 127.0.0.1:9475 or :9475; empty disables metrics)", err)
		}
	}
	if c.DockerPlugin != "" && !filepath.IsAbs(c.DockerPlugin) {
		p.bad(keyDockerPlugin, "%q is not an absolute path (usually /run/docker/plugins/fabric.sock)", c.DockerPlugin)
	}
}

// checkCluster checks the gossip addresses and key, and the sizes and
// ports of the datapath's cluster traffic (conntrack, tunnel port).
func (c Config) checkCluster(p *problems) {
	if c.ClusterBind != "" {
		if err := checkHostPort(WithDefaultPort(c.ClusterBind), false, false, 1); err != "" {
			p.bad(keyClusterBind, "%s (want IP or IP:PORT, for example 10.0.0.1 or 0.0.0.0:7946)", err)
		}
	}
	for _, j := range c.ClusterJoin {
		if err := checkHostPort(WithDefaultPort(j), false, true, 1); err != "" {
			p.bad(keyClusterJoin, "%s (want HOST or HOST:PORT, for example 10.0.0.2:7946)", err)
		}
	}
	if c.NeedsKey() && c.ClusterSecretFile == "" && !c.ClusterInsecure {
		p.bad(keyClusterSecretFile, "a clustered agent (cluster-join, or a cluster-bind that is not loopback) needs a gossip key: "+
			"create one with `fabricctl cluster key generate /etc/fabric/gossip.key`, copy it (mode 0600) to every node and set cluster-secret-file; "+
			"or set cluster-insecure to gossip without one (anyone who reaches the gossip port can then rewrite the cluster)")
	}
	if c.ClusterSecretFile != "" && !filepath.IsAbs(c.ClusterSecretFile) {
		p.bad(keyClusterSecretFile, "%q is not an absolute path", c.ClusterSecretFile)
	}
	if c.ConntrackMax < 64 || c.ConntrackMax > 1<<26 {
		p.bad(keyConntrackMax, "%d must be from 64 to %d entries", c.ConntrackMax, 1<<26)
	}
	if c.TunnelPort < 1 || c.TunnelPort > 65535 {
		p.bad(keyTunnelPort, "%d must be from 1 to 65535 (4789 is the VXLAN port)", c.TunnelPort)
	}
}

// checkDNS checks the embedded DNS's upstreams and TTL, and the default
// network's subnet.
func (c Config) checkDNS(p *problems) {
	for _, u := range c.DNSUpstreams {
		if ap, err := netip.ParseAddrPort(u); err != nil || !ap.Addr().Is4() || ap.Port() == 0 {
			p.bad(keyDNSUpstreams, "%q is not an IPv4 IP:port (for example 10.0.0.2:53)", u)
		}
	}
	if c.DNSTTL < time.Second || c.DNSTTL > 24*time.Hour {
		p.bad(keyDNSTTL, "%v must be from 1s to 24h", c.DNSTTL)
	}

	if c.DefaultSubnet != "" {
		if sub, err := netip.ParsePrefix(c.DefaultSubnet); err != nil {
			p.bad(keyDefaultSubnet, "%q is not an IPv4 CIDR (for example 172.17.0.0/16)", c.DefaultSubnet)
		} else if err := ipam.ValidateNetwork(sub, netip.Addr{}, netip.Prefix{}); err != nil {
			*p = append(*p, fmt.Errorf("%w: %s: %w", ErrInvalidConfig, keyDefaultSubnet, err))
		}
	}
}

// DefaultSubnetPrefix returns DefaultSubnet parsed; the zero Prefix when it
// is empty (pick a free default pool) or invalid (Validate rejects that).
func (c Config) DefaultSubnetPrefix() netip.Prefix {
	p, err := netip.ParsePrefix(c.DefaultSubnet)
	if err != nil {
		return netip.Prefix{}
	}
	return p
}

func checkNodeName(name string) string {
	switch {
	case name == "":
		return "is empty; set it to a name unique in the cluster (the hostname could not be read)"
	case len(name) > maxNodeName:
		return fmt.Sprintf("%q is %d characters long; at most %d are allowed", name, len(name), maxNodeName)
	}
	for _, r := range name {
		if !isNameChar(r) {
			return fmt.Sprintf("%q contains %q; only A-Z a-z 0-9 . _ - are allowed", name, r)
		}
	}
	return ""
}

func isNameChar(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-'
}

func checkIfaceName(name string) string {
	switch {
	case len(name) > maxIfaceName:
		return fmt.Sprintf("%q is longer than %d characters, the kernel's limit for interface names", name, maxIfaceName)
	case name == "." || name == "..":
		return fmt.Sprintf("%q is not an interface name", name)
	case strings.ContainsAny(name, "/: \t\n"):
		return fmt.Sprintf("%q is not an interface name: it contains '/', ':' or white space", name)
	}
	return ""
}

// checkHostPort checks a HOST:PORT address. Without allowEmptyHost the host
// must be given; without allowName it must be an IP address. Ports below
// minPort are rejected (0 asks the kernel for a random port, which makes
// no sense for an address other nodes must know).
func checkHostPort(addr string, allowEmptyHost, allowName bool, minPort int) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Sprintf("%q is not HOST:PORT", addr)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < minPort || n > 65535 {
		return fmt.Sprintf("%q: port %q must be a number from %d to 65535", addr, port, minPort)
	}
	switch {
	case host == "":
		if !allowEmptyHost {
			return fmt.Sprintf("%q has no host", addr)
		}
	case allowName:
		if _, err := netip.ParseAddr(host); err != nil && !isHostname(host) {
			return fmt.Sprintf("%q: %q is neither an IP address nor a host name", addr, host)
		}
	default:
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Sprintf("%q: %q is not an IP address", addr, host)
		}
	}
	return ""
}

// isHostname reports whether s is a syntactically valid DNS name.
func isHostname(s string) bool {
	if len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(strings.TrimSuffix(s, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}
