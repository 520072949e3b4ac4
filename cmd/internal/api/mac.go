package api

import (
	"net"
	"net/netip"
)

// EndpointMAC is the MAC fabric gives an endpoint with IPv4 address a
// unless asked for another: locally administered, 02:fa followed by the
// address, so it never changes while the address stays (a container
// runtime that makes the interface, as the Docker plugin does, gives it
// this MAC from the start).
func EndpointMAC(a netip.Addr) net.HardwareAddr {
	b := a.As4()
	return net.HardwareAddr{0x02, 0xfa, b[0], b[1], b[2], b[3]}
}
