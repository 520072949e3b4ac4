package lab

import (
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/vishvananda/netlink"
)

// nodeUplink is each node's interface on the underlay, what fabricd gets as
// --uplink.
const nodeUplink = "eth0"

// buildUnderlay creates the underlay namespace with its bridge, which
// holds the gateway address the nodes route through.
func buildUnderlay(m *Manifest) error {
	path, err := netns.CreateNamed(m.Underlay.NetNS)
	if err != nil {
		return fmt.Errorf("create underlay namespace: %w", err)
	}
	h, err := netns.HandleAt(path)
	if err != nil {
		return err
	}
	defer h.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: m.Underlay.Bridge}}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("create bridge %s in %s: %w", br.Name, m.Underlay.NetNS, err)
	}
	gw := prefixAddr(m.Gateway, m.Subnet.Bits())
	if err := h.AddrAdd(br, gw); err != nil {
		return fmt.Errorf("add gateway %s to bridge %s: %w", gw.IPNet, br.Name, err)
	}
	if err := h.LinkSetUp(br); err != nil {
		return fmt.Errorf("set bridge %s up: %w", br.Name, err)
	}
	return nil
}

// attachNode creates the node's namespace and plugs it into the underlay:
// a veth pair with its bridge side (n.Port) on the bridge and eth0 in the
// node, the node's address on eth0 and a default route via the gateway.
func attachNode(m *Manifest, n Node) error {
	nodePath, err := netns.CreateNamed(n.NetNS)
	if err != nil {
		return fmt.Errorf("create namespace of node %s: %w", n.ID, err)
	}
	nsFile, err := os.Open(nodePath)
	if err != nil {
		return fmt.Errorf("open namespace of node %s: %w", n.ID, err)
	}
	defer nsFile.Close()

	ul, err := netns.HandleAt(netns.Path(m.Underlay.NetNS))
	if err != nil {
		return err
	}
	defer ul.Close()
	br, err := ul.LinkByName(m.Underlay.Bridge)
	if err != nil {
		return fmt.Errorf("find underlay bridge %s: %w", m.Underlay.Bridge, err)
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: n.Port, MasterIndex: br.Attrs().Index},
		PeerName:      nodeUplink,
		PeerNamespace: netlink.NsFd(int(nsFile.Fd())),
	}
	if err := ul.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s <-> %s:%s: %w", n.Port, n.NetNS, nodeUplink, err)
	}
	if err := ul.LinkSetUp(veth); err != nil {
		return fmt.Errorf("set %s up: %w", n.Port, err)
	}

	h, err := netns.HandleAt(nodePath)
	if err != nil {
		return err
	}
	defer h.Close()
	eth0, err := h.LinkByName(nodeUplink)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", nodeUplink, n.NetNS, err)
	}
	if err := h.AddrAdd(eth0, prefixAddr(n.IP, m.Subnet.Bits())); err != nil {
		return fmt.Errorf("add %s to %s in %s: %w", n.IP, nodeUplink, n.NetNS, err)
	}
	if err := h.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("set %s up in %s: %w", nodeUplink, n.NetNS, err)
	}
	route := &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: m.Gateway.AsSlice()}
	if err := h.RouteAdd(route); err != nil {
		return fmt.Errorf("add default route via %s in %s: %w", m.Gateway, n.NetNS, err)
	}
	return nil
}

func prefixAddr(a netip.Addr, bits int) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, 32)}}
}
