// Package cni is the logic of fabric-cni, fabric's CNI plugin: it reads a
// runtime's network configuration and arguments (libcni types), hands the
// work to fabricd over its socket (the agent makes the endpoint in the
// runtime's namespace, from fabric's IPAM, with the published ports), and
// turns the agent's answer into a spec result. It knows the agent only
// through the api package.
package cni

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// Type is the plugin's name in a network configuration ("type").
const Type = "fabric-cni"

// Versions are the spec versions the plugin speaks.
var Versions = version.PluginSupports("0.4.0", "1.0.0", "1.1.0")

// NetConf is fabric-cni's network configuration.
type NetConf struct {
	types.PluginConf
	// Network is the fabric network to attach to (default: Name).
	Network string `json:"network,omitempty"`
	// Socket is fabricd's API socket (default api.DefaultSocket).
	Socket string `json:"socket,omitempty"`
	// RuntimeConfig carries what the capabilities let the runtime ask.
	RuntimeConfig struct {
		PortMappings []PortMapping `json:"portMappings,omitempty"`
		IPs          []string      `json:"ips,omitempty"`
		MAC          string        `json:"mac,omitempty"`
	} `json:"runtimeConfig,omitempty"`
}

// PortMapping is one entry of the portMappings capability.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol,omitempty"`
	HostIP        string `json:"hostIP,omitempty"`
}

// ParseConf reads and checks a network configuration (stdin of every
// command). A malformed document is a decoding failure, wrong values an
// invalid configuration.
func ParseConf(stdin []byte) (*NetConf, error) {
	conf := &NetConf{}
	dec := json.NewDecoder(bytes.NewReader(stdin))
	if err := dec.Decode(conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "fabric-cni: malformed network configuration", err.Error())
	}
	if dec.More() {
		return nil, types.NewError(types.ErrDecodingFailure, "fabric-cni: malformed network configuration", "trailing data after the JSON object")
	}
	bad := func(format string, args ...any) error {
		return types.NewError(types.ErrInvalidNetworkConfig, "fabric-cni: "+fmt.Sprintf(format, args...), "")
	}
	if conf.Name == "" {
		return nil, bad(`the network configuration has no "name"`)
	}
	if conf.Network == "" {
		conf.Network = conf.Name
	}
	if strings.ContainsAny(conf.Network, "/ \t\n") {
		return nil, bad(`"network" %q is not a fabric network name`, conf.Network)
	}
	if conf.Socket == "" {
		conf.Socket = api.DefaultSocket
	}
	if !filepath.IsAbs(conf.Socket) {
		return nil, bad(`"socket" %q must be an absolute path (fabricd's --socket)`, conf.Socket)
	}
	if conf.IPAM.Type != "" {
		return nil, bad(`"ipam" is not used: addresses come from fabric's IPAM (fabricctl network create --subnet); remove "ipam"`)
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "fabric-cni: bad prevResult", err.Error())
	}
	return conf, nil
}

// request turns the runtime's asks into the agent's create request.
func (c *NetConf) request(name, containerID, netnsPath, ifName string) (api.SandboxCreate, error) {
	bad := func(format string, args ...any) error {
		return types.NewError(types.ErrInvalidNetworkConfig, "fabric-cni: "+fmt.Sprintf(format, args...), "")
	}
	req := api.SandboxCreate{
		Name: name, Network: c.Network, NetNS: netnsPath, Owner: api.OwnerCNI,
		ContainerID: containerID, IfName: ifName, MAC: c.RuntimeConfig.MAC,
	}
	switch len(c.RuntimeConfig.IPs) {
	case 0:
	case 1:
		s := c.RuntimeConfig.IPs[0]
		a, err := netip.ParseAddr(s)
		if err != nil {
			p, perr := netip.ParsePrefix(s)
			if perr != nil {
				return req, bad("ips: %q is not an IP address or CIDR", s)
			}
			a = p.Addr()
		}
		if !a.Is4() {
			return req, bad("ips: %q is not IPv4 (fabric networks are IPv4)", s)
		}
		req.IP = a.String()
	default:
		return req, bad("ips: %d addresses asked, fabric gives one address per attachment", len(c.RuntimeConfig.IPs))
	}
	if c.RuntimeConfig.MAC != "" {
		if _, err := net.ParseMAC(c.RuntimeConfig.MAC); err != nil {
			return req, bad("mac: %q is not a MAC address", c.RuntimeConfig.MAC)
		}
	}
	for _, pm := range c.RuntimeConfig.PortMappings {
		proto := strings.ToLower(pm.Protocol)
		if proto == "" {
			proto = "tcp"
		}
		if proto != "tcp" && proto != "udp" {
			return req, bad("portMappings: protocol %q is not supported (tcp or udp)", pm.Protocol)
		}
		if pm.HostPort < 1 || pm.HostPort > 65535 || pm.ContainerPort < 1 || pm.ContainerPort > 65535 {
			return req, bad("portMappings: ports %d:%d must be 1 to 65535", pm.HostPort, pm.ContainerPort)
		}
		spec := fmt.Sprintf("%d:%d/%s", pm.HostPort, pm.ContainerPort, proto)
		if pm.HostIP != "" {
			a, err := netip.ParseAddr(pm.HostIP)
			if err != nil || !a.Is4() {
				return req, bad("portMappings: hostIP %q is not an IPv4 address", pm.HostIP)
			}
			spec = pm.HostIP + ":" + spec
		}
		req.Ports = append(req.Ports, spec)
	}
	return req, nil
}

// SandboxName is the fabric sandbox of one CNI attachment (network
// configuration, container, interface): the same for ADD, CHECK and DEL,
// and one DNS label as sandbox names must be.
func SandboxName(network, containerID, ifName string) string {
	h := sha256.Sum256([]byte(network + "\x00" + containerID + "\x00" + ifName))
	return "cni-" + hex.EncodeToString(h[:8])
}
