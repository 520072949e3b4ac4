package agent

import (
	"fmt"
	"net/netip"

	"github.com/fabricnet/fabric/cmd/internal/ipam"
	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/vishvananda/netlink"
)

// RouteLister lists the IPv4 destinations the host already reaches: its
// routes and the prefixes of its addresses, without the default route. It
// is the agent's one question to the kernel when it checks a subnet, so
// that the check can be tested without root.
type RouteLister interface {
	HostRoutes() ([]netip.Prefix, error)
}

// netlinkRoutes asks the kernel, in the namespace at nsPath ("" = the
// agent's own).
type netlinkRoutes struct{ nsPath string }

func (r netlinkRoutes) HostRoutes() ([]netip.Prefix, error) {
	var h *netlink.Handle
	if r.nsPath != "" {
		var err error
		if h, err = netns.HandleAt(r.nsPath); err != nil {
			return nil, err
		}
		defer h.Close()
	}
	routes, err := ipam.HostRoutesIn(h)
	if err != nil {
		return nil, fmt.Errorf("list host routes: %w", err)
	}
	return routes, nil
}

// hostRoutes lists the host's routes except those of fabric's own networks.
func (a *Agent) hostRoutes() ([]netip.Prefix, error) {
	routes, err := a.routes.HostRoutes()
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
