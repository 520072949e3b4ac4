package kernel

import (
	"bytes"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/datapath"
	fabricns "github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// ensureBridge creates the network's bridge or brings an existing one back
// to the wanted MTU, MAC, address and state; it does not touch nftables.
func (d *Datapath) ensureBridge(n datapath.Network) (created bool, err error) {
	link, err := d.nl.LinkByName(n.Bridge)
	switch {
	case plumb.IsNotFound(err):
		link = nil
	case err != nil:
		return false, fmt.Errorf("look up bridge %s: %w", n.Bridge, err)
	default:
		if err := d.host.Claim(link, n.ID, bridgeMAC(n.ID)); err != nil {
			return false, err
		}
		if link.Type() != "bridge" {
			d.log.Info("replacing fabric link that is not a bridge", "link", n.Bridge, "type", link.Type())
			if err := d.nl.LinkDel(link); err != nil {
				return false, fmt.Errorf("delete non-bridge link %s: %w", n.Bridge, err)
			}
			link = nil
		}
	}
	if link == nil {
		if link, err = d.createBridge(n); err != nil {
			return false, err
		}
		created = true
		defer func() {
			if err != nil {
				if delErr := d.nl.LinkDel(link); delErr != nil {
					d.log.Warn("roll back bridge", "bridge", n.Bridge, "err", delErr)
				}
			}
		}()
	}
	return created, d.fixBridge(link, n)
}

// fixBridge brings an existing bridge to the wanted state.
func (d *Datapath) fixBridge(link netlink.Link, n datapath.Network) error {
	attrs := link.Attrs()
	if want := plumb.MTUOf(n); attrs.MTU != want {
		if err := d.nl.LinkSetMTU(link, want); err != nil {
			return fmt.Errorf("set MTU %d on bridge %s: %w", want, n.Bridge, err)
		}
	}
	if mac := bridgeMAC(n.ID); !bytes.Equal(attrs.HardwareAddr, mac) {
		if err := d.nl.LinkSetHardwareAddr(link, mac); err != nil {
			return fmt.Errorf("set MAC on bridge %s: %w", n.Bridge, err)
		}
	}
	if err := d.ensureOnlyAddr(link, &net.IPNet{IP: n.Gateway.AsSlice(), Mask: net.CIDRMask(n.Subnet.Bits(), 32)}); err != nil {
		return fmt.Errorf("bridge %s: %w", n.Bridge, err)
	}
	if attrs.Flags&net.FlagUp == 0 {
		if err := d.nl.LinkSetUp(link); err != nil {
			return fmt.Errorf("set bridge %s up: %w", n.Bridge, err)
		}
	}
	return d.ensureSysctls(n.Bridge)
}

// createBridge adds the bridge, up, with a MAC derived from the network ID:
// a bridge with a kernel-chosen MAC takes its lowest port's MAC, so the
// gateway's MAC would change under the sandboxes' ARP caches as endpoints
// come and go.
func (d *Datapath) createBridge(n datapath.Network) (netlink.Link, error) {
	la := netlink.NewLinkAttrs()
	la.Name = n.Bridge
	la.HardwareAddr = bridgeMAC(n.ID)
	la.Flags = net.FlagUp
	// The MTU is set after creation on purpose: only a changed MTU marks the
	// bridge as "MTU set by user", which stops the kernel from resetting it
	// to 1500 when the last port leaves.
	if err := d.nl.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
		return nil, fmt.Errorf("create bridge %s: %w", n.Bridge, err)
	}
	link, err := d.nl.LinkByName(n.Bridge)
	if err == nil {
		err = d.nl.LinkSetAlias(link, plumb.OwnerAlias(n.ID))
	}
	if err != nil {
		_ = d.nl.LinkDel(&netlink.Bridge{LinkAttrs: la})
		return nil, fmt.Errorf("set up new bridge %s: %w", n.Bridge, err)
	}
	link.Attrs().Alias = plumb.OwnerAlias(n.ID)
	d.log.Info("created bridge", "bridge", n.Bridge, "network", n.ID)
	return link, nil
}

// deleteBridge removes the network's bridge if fabric owns it under this ID.
func (d *Datapath) deleteBridge(n datapath.Network) error {
	if n.Bridge == "" {
		return nil
	}
	link, err := d.nl.LinkByName(n.Bridge)
	if plumb.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up bridge %s: %w", n.Bridge, err)
	}
	if link.Attrs().Alias != plumb.OwnerAlias(n.ID) {
		d.log.Warn("not deleting bridge owned by someone else", "bridge", n.Bridge, "alias", link.Attrs().Alias, "network", n.ID)
		return nil
	}
	if err := d.nl.LinkDel(link); err != nil && !plumb.IsNotFound(err) {
		return fmt.Errorf("delete bridge %s: %w", n.Bridge, err)
	}
	d.log.Info("deleted bridge", "bridge", n.Bridge, "network", n.ID)
	return nil
}

// bridgeMAC derives a stable MAC from the network ID, so a recreated
// bridge keeps the MAC the sandboxes know.
func bridgeMAC(id string) net.HardwareAddr { return plumb.DerivedMAC("fabric-bridge:" + id) }

// ensureSysctls turns on forwarding in the host namespace and
// route_localnet on the bridge (so 127.0.0.1 published ports can be
// DNATed out of it). /proc/sys/net shows the namespace of the thread that
// opens it, hence the switch, also when the host namespace is the
// process's own: another goroutine's thread may be elsewhere.
func (d *Datapath) ensureSysctls(bridge string) error {
	set := func() error {
		if err := plumb.EnsureSysctl("net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
		return plumb.EnsureSysctl("net/ipv4/conf/"+bridge+"/route_localnet", "1")
	}
	return fabricns.Do(d.nsPath, set)
}

// ensureOnlyAddr leaves exactly one IPv4 address, want, on a link fabric owns.
func (d *Datapath) ensureOnlyAddr(link netlink.Link, want *net.IPNet) error {
	return plumb.EnsureOnlyAddr(d.nl, link, want)
}

// netStateOf is the part of n the nftables rules depend on.
func netStateOf(n datapath.Network) netState {
	return netState{ID: n.ID, Bridge: n.Bridge, Subnet: n.Subnet.Masked(), Internal: n.Internal}
}

// ensureVeth creates or repairs the endpoint's veth pair (plumb), its host
// side a port of the network's bridge (with index br) holding the
// endpoint's MAC, the sandbox side knowing the gateway's (resolve.go). An
// overlay sandbox retries ARP fast (plumb.FastARP).
func (d *Datapath) ensureVeth(n datapath.Network, ep datapath.Endpoint) (created bool, br int, err error) {
	bridge, err := d.nl.LinkByName(n.Bridge)
	if plumb.IsNotFound(err) {
		return false, 0, fmt.Errorf("endpoint %s: bridge %s of network %s does not exist; ensure the network first: %w", ep.ID, n.Bridge, n.ID, err)
	}
	if err != nil {
		return false, 0, fmt.Errorf("look up bridge %s: %w", n.Bridge, err)
	}
	if bridge.Attrs().Alias != plumb.OwnerAlias(n.ID) {
		return false, 0, plumb.Invalidf("endpoint %s: link %s is not the bridge of network %s", ep.ID, n.Bridge, n.ID)
	}
	mac := ep.MAC
	if e, ok := d.spoof[ep.HostIfName]; len(mac) != 6 && ok && e.addr == ep.Addr.Addr().Unmap() {
		mac = e.mac[:]
	}
	sides := plumb.VethSides{
		Host: func(host netlink.Link, created bool) error { return d.ensureHostSide(host, bridge, n, mac, created) },
		After: func(sb *plumb.Sandbox, _ netlink.Link) error {
			if n.Driver == datapath.DriverOverlay {
				if err := fabricns.DoWithOwnProc(sb.FDPath(), func() error { return plumb.FastARP(ep.IfName) }); err != nil {
					return err
				}
			}
			if ep.Adopted {
				return nil // the container's neighbours are the runtime's
			}
			peer, err := sb.NL().LinkByName(ep.IfName)
			if err != nil {
				return fmt.Errorf("look up %s in sandbox: %w", ep.IfName, err)
			}
			return ensureGatewayNeighbour(sb, peer, n)
		},
	}
	created, err = d.host.EnsureVeth(n, ep, sides)
	return created, bridge.Attrs().Index, err
}

// ensureHostSide attaches the host veth to the bridge with hairpin mode
// (a sandbox reaching its own published port through the host address is
// bridged back out of the port it came in on when br_netfilter is active)
// and the endpoint's MAC (if known) pinned to it.
func (d *Datapath) ensureHostSide(host, br netlink.Link, n datapath.Network, mac net.HardwareAddr, created bool) error {
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
	if len(mac) == 6 {
		if err := d.ensurePortFDB(host, mac); err != nil {
			return err
		}
	}
	if created {
		return nil
	}
	return d.host.RepairHostMTUUp(host, n)
}
