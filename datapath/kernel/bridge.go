package kernel

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/datapath"
	fabricns "github.com/fabricnet/fabric/datapath/netns"
)

// ensureBridge creates the network's bridge or brings an existing one back
// to the wanted MTU, MAC, address and state; it does not touch nftables.
func (d *Datapath) ensureBridge(n datapath.Network) (created bool, err error) {
	link, err := d.nl.LinkByName(n.Bridge)
	switch {
	case isNotFound(err):
		link = nil
	case err != nil:
		return false, fmt.Errorf("look up bridge %s: %w", n.Bridge, err)
	default:
		if err := d.claim(link, n.ID, bridgeMAC(n.ID)); err != nil {
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
	if want := mtuOf(n); attrs.MTU != want {
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
		err = d.nl.LinkSetAlias(link, ownerAlias(n.ID))
	}
	if err != nil {
		_ = d.nl.LinkDel(&netlink.Bridge{LinkAttrs: la})
		return nil, fmt.Errorf("set up new bridge %s: %w", n.Bridge, err)
	}
	link.Attrs().Alias = ownerAlias(n.ID)
	d.log.Info("created bridge", "bridge", n.Bridge, "network", n.ID)
	return link, nil
}

// ensureOnlyAddr leaves exactly one IPv4 address, want, on a link fabric owns.
func (d *Datapath) ensureOnlyAddr(link netlink.Link, want *net.IPNet) error {
	return ensureOnlyAddr(d.nl, link, want)
}

func ensureOnlyAddr(h *netlink.Handle, link netlink.Link, want *net.IPNet) error {
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	found := false
	for _, a := range addrs {
		if a.IPNet.IP.Equal(want.IP) && bytes.Equal(a.IPNet.Mask, want.Mask) {
			found = true
			continue
		}
		if err := h.AddrDel(link, &a); err != nil {
			return fmt.Errorf("remove stale address %s: %w", a.IPNet, err)
		}
	}
	if found {
		return nil
	}
	if err := h.AddrAdd(link, &netlink.Addr{IPNet: want}); err != nil {
		return fmt.Errorf("add address %s: %w", want, err)
	}
	return nil
}

// deleteBridge removes the network's bridge if fabric owns it under this ID.
func (d *Datapath) deleteBridge(n datapath.Network) error {
	if n.Bridge == "" {
		return nil
	}
	link, err := d.nl.LinkByName(n.Bridge)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up bridge %s: %w", n.Bridge, err)
	}
	if link.Attrs().Alias != ownerAlias(n.ID) {
		d.log.Warn("not deleting bridge owned by someone else", "bridge", n.Bridge, "alias", link.Attrs().Alias, "network", n.ID)
		return nil
	}
	if err := d.nl.LinkDel(link); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete bridge %s: %w", n.Bridge, err)
	}
	d.log.Info("deleted bridge", "bridge", n.Bridge, "network", n.ID)
	return nil
}

// claim accepts a link fabric made for this object and refuses anything
// else: links of other objects and links fabric did not make. The kernel
// ignores an alias given at creation, so it is set right after; a link left
// without alias by a crash in between is recognised by the MAC fabric
// derived from the same ID and gets its alias now.
func (d *Datapath) claim(link netlink.Link, id string, mac net.HardwareAddr) error {
	a := link.Attrs()
	want := ownerAlias(id)
	switch {
	case a.Alias == want:
		return nil
	case a.Alias == "" && bytes.Equal(a.HardwareAddr, mac):
		if err := d.nl.LinkSetAlias(link, want); err != nil {
			return fmt.Errorf("set alias on %s: %w", a.Name, err)
		}
		a.Alias = want
		return nil
	case strings.HasPrefix(a.Alias, datapath.OwnerPrefix):
		return invalidf("link %s already belongs to %s (wanted for %s)", a.Name, a.Alias, want)
	default:
		return invalidf("link %s exists and is not managed by fabric; pick another name or remove it", a.Name)
	}
}

// bridgeMAC derives a stable MAC from the network ID, so a recreated
// bridge keeps the MAC the sandboxes know.
func bridgeMAC(id string) net.HardwareAddr { return derivedMAC("fabric-bridge:" + id) }

// hostVethMAC derives the host-side veth MAC from the endpoint ID.
func hostVethMAC(id string) net.HardwareAddr { return derivedMAC("fabric-veth:" + id) }

// derivedMAC is a locally administered unicast MAC hashed from seed.
func derivedMAC(seed string) net.HardwareAddr {
	sum := sha256.Sum256([]byte(seed))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&0xfe | 0x02
	return mac
}

// ensureSysctls turns on forwarding in the host namespace and
// route_localnet on the bridge (so 127.0.0.1 published ports can be
// DNATed out of it). /proc/sys/net shows the namespace of the thread that
// opens it, hence the switch, also when the host namespace is the
// process's own: another goroutine's thread may be elsewhere.
func (d *Datapath) ensureSysctls(bridge string) error {
	set := func() error {
		if err := ensureSysctl("net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
		return ensureSysctl("net/ipv4/conf/"+bridge+"/route_localnet", "1")
	}
	return fabricns.Do(d.nsPath, set)
}

func ensureSysctl(name, value string) error {
	p := "/proc/sys/" + name
	cur, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("read sysctl %s: %w", name, err)
	}
	if strings.TrimSpace(string(cur)) == value {
		return nil
	}
	if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", name, value, err)
	}
	return nil
}
