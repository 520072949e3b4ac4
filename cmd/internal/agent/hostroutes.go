package agent

import (
	"net/netip"

	"github.com/fabricnet/fabric/cmd/internal/ipam"
)

// hostRoutes lists the host's routes except those of fabric's own networks.
func (a *Agent) hostRoutes() ([]netip.Prefix, error) {
	routes, err := a.host.HostRoutes()
	if err != nil {
		return nil, err
	}
	out := routes[:0]
	for _, r := range routes {
		ours := false
		for _, n := range a.networks {
			if r == n.Subnet {
				ours = true
			}
		}
		if !ours {
			out = append(out, r)
		}
	}
	return out, nil
}

// checkHostRoutes refuses a subnet that overlaps a route of the host: the
// network would shadow the host's own traffic there, or be shadowed by it.
func (a *Agent) checkHostRoutes(subnet netip.Prefix) error {
	routes, err := a.hostRoutes()
	if err != nil {
		return err
	}
	for _, r := range routes {
		if ipam.Overlaps(r, subnet) {
			return conflictf("subnet %s overlaps the host route %s; pick a subnet the host does not already reach", subnet, r)
		}
	}
	return nil
}

// checkGossipedOverlay checks an overlay network that arrived from the
// cluster before it is programmed here: the sender checked it too, but
// another node's host routes are not this node's, and a buggy or forged
// record must not put a special-use range or a host route on a bridge.
func (a *Agent) checkGossipedOverlay(subnet netip.Prefix, gateway netip.Addr) error {
	if err := ipam.ValidateNetwork(subnet, gateway, netip.Prefix{}); err != nil {
		return err
	}
	if err := ipam.CheckSpecialUse(subnet); err != nil {
		return err
	}
	return a.checkHostRoutes(subnet)
}
