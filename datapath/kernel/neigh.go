package kernel

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
)

// seedNeighbours tells the host the endpoint's MAC (on the bridge) and the
// sandbox the gateway's (the bridge's MAC, derived from the network ID),
// so that neither asks by ARP. An ARP request is a broadcast, which the
// bridge floods to every port: every sandbox of the network takes a copy,
// and the first packet between host and a new sandbox (a published port, the
// bench's readiness ping, the sandbox's first packet out) waited for a
// flood that costs more the more sandboxes there are. The entries are
// REACHABLE, not permanent: the kernel confirms them by unicast probes
// later and forgets them when the endpoint is gone.
func seedNeighbours(host, sandbox *netlink.Handle, br netlink.Link, n datapath.Network, ep datapath.Endpoint) error {
	if ep.MAC != nil && ep.Addr.IsValid() {
		hostNeigh := &netlink.Neigh{LinkIndex: br.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_REACHABLE,
			IP: ep.Addr.Addr().AsSlice(), HardwareAddr: ep.MAC}
		if err := host.NeighSet(hostNeigh); err != nil {
			return fmt.Errorf("endpoint %s: neighbour entry for %s on %s: %w", ep.ID, ep.Addr.Addr(), n.Bridge, err)
		}
	}
	if !n.Gateway.IsValid() {
		return nil
	}
	peer, err := sandbox.LinkByName(ep.IfName)
	if err != nil {
		return fmt.Errorf("endpoint %s: look up %s in sandbox: %w", ep.ID, ep.IfName, err)
	}
	gw := &netlink.Neigh{LinkIndex: peer.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_REACHABLE,
		IP: n.Gateway.AsSlice(), HardwareAddr: bridgeMAC(n.ID)}
	if err := sandbox.NeighSet(gw); err != nil {
		return fmt.Errorf("endpoint %s: neighbour entry for gateway %s in sandbox: %w", ep.ID, n.Gateway, err)
	}
	return nil
}
