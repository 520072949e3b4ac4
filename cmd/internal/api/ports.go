package api

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ParsePort parses Docker's -p syntax: [HOSTIP:]HOSTPORT:PORT[/tcp|/udp].
func ParsePort(s string) (Port, error) {
	bad := func(why string) (Port, error) {
		return Port{}, fmt.Errorf("bad port mapping %q: %s (want [HOSTIP:]HOSTPORT:PORT[/tcp|/udp])", s, why)
	}
	spec, proto := s, "tcp"
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		spec, proto = s[:i], strings.ToLower(s[i+1:])
		if proto != "tcp" && proto != "udp" {
			return bad("protocol must be tcp or udp")
		}
	}
	parts := strings.Split(spec, ":")
	var hostIP string
	switch len(parts) {
	case 2:
	case 3:
		hostIP = parts[0]
		parts = parts[1:]
		a, err := netip.ParseAddr(hostIP)
		if err != nil || !a.Is4() {
			return bad("host IP must be an IPv4 address")
		}
		if a.IsUnspecified() {
			hostIP = ""
		}
	default:
		return bad("need both a host port and a sandbox port")
	}
	hp, err := parsePortNum(parts[0])
	if err != nil {
		return bad("host port " + err.Error())
	}
	cp, err := parsePortNum(parts[1])
	if err != nil {
		return bad("sandbox port " + err.Error())
	}
	return Port{Proto: proto, HostIP: hostIP, HostPort: hp, Port: cp}, nil
}

func parsePortNum(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q must be a number from 1 to 65535", s)
	}
	return uint16(n), nil
}

// String formats a port mapping in the -p syntax.
func (p Port) String() string {
	s := fmt.Sprintf("%d:%d/%s", p.HostPort, p.Port, p.Proto)
	if p.HostIP != "" {
		s = p.HostIP + ":" + s
	}
	return s
}
