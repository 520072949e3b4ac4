package kernel

import (
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/datapath"
	fabricns "github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// netStateOf is the part of n the nftables rules depend on.
func netStateOf(n datapath.Network) netState {
	return netState{ID: n.ID, Bridge: n.Bridge, Subnet: n.Subnet.Masked(), Internal: n.Internal}
}

// ensureVeth creates or repairs the endpoint's veth pair (plumb), its host
// side a port of the network's bridge. An overlay sandbox retries ARP
// fast (plumb.FastARP).
func (d *Datapath) ensureVeth(n datapath.Network, ep datapath.Endpoint) (created bool, err error) {
	br, err := d.nl.LinkByName(n.Bridge)
	if plumb.IsNotFound(err) {
		return false, fmt.Errorf("endpoint %s: bridge %s of network %s does not exist; ensure the network first: %w", ep.ID, n.Bridge, n.ID, err)
	}
	if err != nil {
		return false, fmt.Errorf("look up bridge %s: %w", n.Bridge, err)
	}
	if br.Attrs().Alias != plumb.OwnerAlias(n.ID) {
		return false, plumb.Invalidf("endpoint %s: link %s is not the bridge of network %s", ep.ID, n.Bridge, n.ID)
	}
	sides := plumb.VethSides{
		Host: func(host netlink.Link, created bool) error { return d.ensureHostSide(host, br, n, created) },
	}
	if n.Driver == datapath.DriverOverlay {
		sides.After = func(sb *plumb.Sandbox, _ netlink.Link) error {
			return fabricns.Do(sb.FDPath(), func() error { return plumb.FastARP(ep.IfName) })
		}
	}
	return d.host.EnsureVeth(n, ep, sides)
}

// ensureHostSide attaches the host veth to the bridge with hairpin mode
// (a sandbox reaching its own published port through the host address is
// bridged back out of the port it came in on when br_netfilter is active).
func (d *Datapath) ensureHostSide(host, br netlink.Link, n datapath.Network, created bool) error {
	attrs := host.Attrs()
	if attrs.MasterIndex != br.Attrs().Index {
		if err := d.nl.LinkSetMasterByIndex(host, br.Attrs().Index); err != nil {
			return fmt.Errorf("attach to bridge %s: %w", n.Bridge, err)
		}
	}
	// Bridge port flags are not in a plain link query; setting the flag is
	// one request, reading it would be a dump of every port.
	if err := d.nl.LinkSetHairpin(host, true); err != nil {
		return fmt.Errorf("set hairpin mode: %w", err)
	}
	if created {
		return nil
	}
	return d.host.RepairHostMTUUp(host, n)
}
