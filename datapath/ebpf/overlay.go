package ebpf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/bpf"
	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// Overlay networks are bridge networks whose subnet spans hosts: local
// endpoints are served exactly like a bridge network's, and addresses of
// the subnet that live on other nodes (SetRemotes, the `remotes` map) are
// reached through one flow-based VXLAN device per host, tunDevice. The
// endpoint program sets the tunnel key (node, VNI) and redirects into it;
// bpf.Tunnel's program at its ingress delivers what other nodes send.
//
// Like the gateway device, tunDevice's alias is not OwnerPrefix-marked,
// so the kernel datapath's pruning never takes it for its own leftover;
// Sync here removes it once no overlay network is left.
const (
	tunDevice        = "fabric-vx"
	tunAlias         = "fabric-ebpf tunnel"
	pinTunnelIngress = "tunnel-ingress"
)

// tunnelPort is the configured VXLAN port, or the IANA one.
func (f *Forwarder) tunnelPort() uint16 {
	if f.opts.Tunnel.Port != 0 {
		return f.opts.Tunnel.Port
	}
	return datapath.DefaultTunnelPort
}

// checkOverlay refuses an overlay network the host cannot carry: no
// tunnel address, a VNI out of range or one another network already uses
// (the receiving program tells networks apart by VNI alone).
func (f *Forwarder) checkOverlay(n datapath.Network) error {
	if !f.opts.Tunnel.Local.Is4() {
		return fmt.Errorf("network %s: overlay networks need the host's IPv4 tunnel address (the underlay address other nodes reach it at); none is configured: %w", n.ID, datapath.ErrInvalid)
	}
	if n.VNI == 0 || n.VNI > bpf.MaxVNI {
		return fmt.Errorf("network %s: overlay VNI %d must be 1 to %d: %w", n.ID, n.VNI, bpf.MaxVNI, datapath.ErrInvalid)
	}
	for other, st := range f.nets {
		if other != n.ID && st.net.Driver == datapath.DriverOverlay && st.net.VNI == n.VNI {
			return fmt.Errorf("network %s: VNI %d is taken by network %s: %w", n.ID, n.VNI, other, datapath.ErrInvalid)
		}
	}
	return nil
}

// ensureTunnel makes the VXLAN device (flow-based, learning off, the
// tunnel port, up), attaches the tunnel program at its ingress and tells
// the endpoint program where it is. A device of that name that is fabric's
// but configured differently is replaced; one that is not fabric's is an
// error.
func (f *Forwarder) ensureTunnel() error {
	local := f.opts.Tunnel.Local
	under, err := f.underlay()
	if err != nil {
		return err
	}
	l, err := f.nl.LinkByName(tunDevice)
	switch {
	case err == nil:
		vx, ok := l.(*netlink.Vxlan)
		if !ok || l.Attrs().Alias != tunAlias {
			return fmt.Errorf("link %s exists and is not fabric's tunnel device; rename or remove it", tunDevice)
		}
		if !vx.FlowBased || vx.Learning || vx.Port != int(f.tunnelPort()) || !vx.SrcAddr.Equal(local.AsSlice()) {
			f.log.Info("replacing tunnel device with different settings", "link", tunDevice,
				"port", vx.Port, "local", vx.SrcAddr, "external", vx.FlowBased, "learning", vx.Learning)
			if err := f.nl.LinkDel(l); err != nil && !isLinkGone(err) {
				return fmt.Errorf("remove %s: %w", tunDevice, err)
			}
			l = nil
		}
	case isLinkGone(err):
		l = nil
	default:
		return fmt.Errorf("look up %s: %w", tunDevice, err)
	}
	if l == nil {
		if l, err = f.createTunnel(local); err != nil {
			return err
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := f.nl.LinkSetUp(l); err != nil {
			return upError(err)
		}
	}
	ifindex := l.Attrs().Index
	if err := f.attachTC(f.linkPin(pinTunnelIngress), ifindex, f.tun.FromTunnel(), ebpf.AttachTCXIngress); err != nil {
		return fmt.Errorf("tunnel %s: %w", tunDevice, err)
	}
	f.underlayName, f.underlayMTU = under.Attrs().Name, under.Attrs().MTU
	return f.setTunnelConfig(ifindex, local)
}

func (f *Forwarder) createTunnel(local netip.Addr) (netlink.Link, error) {
	la := netlink.NewLinkAttrs()
	la.Name = tunDevice
	vx := &netlink.Vxlan{
		LinkAttrs: la,
		FlowBased: true, // collect_md: the programs set VNI and remote per packet
		Learning:  false,
		Port:      int(f.tunnelPort()),
		SrcAddr:   local.AsSlice(),
	}
	if err := f.nl.LinkAdd(vx); err != nil {
		return nil, fmt.Errorf("create %s (flow-based VXLAN, UDP port %d): %w", tunDevice, f.tunnelPort(), err)
	}
	l, err := plumb.MarkNew(f.nl, tunDevice, tunAlias)
	if err != nil {
		if l != nil {
			_ = f.nl.LinkDel(l)
		}
		return nil, err
	}
	if err := f.nl.LinkSetUp(l); err != nil {
		_ = f.nl.LinkDel(l)
		return nil, upError(err)
	}
	return f.nl.LinkByIndex(l.Attrs().Index)
}

// upError explains the usual reason a VXLAN device cannot come up.
func upError(err error) error {
	if errors.Is(err, unix.EADDRINUSE) {
		return fmt.Errorf("set %s up: its UDP port is taken, most likely by a fixed-VNI VXLAN device of the kernel datapath or another overlay (a flow-based device cannot share it): %w", tunDevice, err)
	}
	return fmt.Errorf("set %s up: %w", tunDevice, err)
}

// underlay finds the interface holding the tunnel address: Tunnel.Device
// if given (which must hold it), else whichever does.
func (f *Forwarder) underlay() (netlink.Link, error) {
	local := f.opts.Tunnel.Local
	var links []netlink.Link
	if f.opts.Tunnel.Device != "" {
		l, err := f.nl.LinkByName(f.opts.Tunnel.Device)
		if err != nil {
			return nil, fmt.Errorf("tunnel device %s: %w", f.opts.Tunnel.Device, err)
		}
		links = []netlink.Link{l}
	}
	var filter netlink.Link
	if len(links) == 1 {
		filter = links[0]
	}
	addrs, err := plumb.RetryDump(func() ([]netlink.Addr, error) { return f.nl.AddrList(filter, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && ip == local {
			if filter != nil {
				return filter, nil
			}
			l, err := f.nl.LinkByIndex(a.LinkIndex)
			if err != nil {
				return nil, fmt.Errorf("interface of tunnel address %s: %w", local, err)
			}
			return l, nil
		}
	}
	if filter != nil {
		return nil, fmt.Errorf("tunnel address %s is not on %s: %w", local, filter.Attrs().Name, datapath.ErrInvalid)
	}
	return nil, fmt.Errorf("tunnel address %s is on no interface of the host: %w", local, datapath.ErrInvalid)
}

// setTunnelConfig tells the endpoint program the tunnel device (0: none).
func (f *Forwarder) setTunnelConfig(ifindex int, local netip.Addr) error {
	if f.hostCfg.TunnelIfindex == ifindex && f.hostCfg.TunnelLocal == local {
		return nil
	}
	c := f.hostCfg
	c.TunnelIfindex, c.TunnelLocal = ifindex, local
	if err := f.objs.SetHostConfig(c); err != nil {
		return err
	}
	f.hostCfg = c
	return nil
}

// adoptTunnel picks up the tunnel device an earlier run left, so that the
// host config written at start keeps sending overlay traffic into it
// until Sync has re-ensured everything.
func (f *Forwarder) adoptTunnel() {
	l, err := plumb.OwnLink(f.nl, tunDevice, tunAlias)
	if err != nil || l == nil {
		return
	}
	vx, ok := l.(*netlink.Vxlan)
	if !ok {
		return
	}
	f.hostCfg.TunnelIfindex = l.Attrs().Index
	f.hostCfg.TunnelLocal = f.opts.Tunnel.Local
	if !f.hostCfg.TunnelLocal.IsValid() {
		f.hostCfg.TunnelLocal, _ = netip.AddrFromSlice(vx.SrcAddr.To4())
	}
}

// deleteTunnel removes the device, its program and the host config's
// reference to it; a missing device is not an error.
func (f *Forwarder) deleteTunnel() error {
	var errs []error
	errs = append(errs, f.setTunnelConfig(0, netip.Addr{}))
	errs = append(errs, f.detach(f.linkPin(pinTunnelIngress)))
	if l, err := plumb.OwnLink(f.nl, tunDevice, tunAlias); err == nil && l != nil {
		if err := f.nl.LinkDel(l); err != nil && !isLinkGone(err) {
			errs = append(errs, fmt.Errorf("remove %s: %w", tunDevice, err))
		}
	}
	return errors.Join(errs...)
}

func isLinkGone(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// SetRemotes makes remotes the complete set of remote endpoints of
// overlay network n. Everything is checked before anything changes: an
// invalid remote is ErrInvalid and leaves the map as it was.
func (f *Forwarder) SetRemotes(n datapath.Network, remotes []datapath.Remote) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.setRemotes(n, remotes)
}

func (f *Forwarder) setRemotes(n datapath.Network, remotes []datapath.Remote) error {
	if n.Driver != datapath.DriverOverlay {
		if len(remotes) == 0 {
			return nil
		}
		return fmt.Errorf("network %s: remotes are for overlay networks, not %q ones: %w", n.ID, n.Driver, datapath.ErrInvalid)
	}
	id := netID(n.ID)
	want, err := bpfRemotes(id, n, remotes)
	if err != nil {
		return err
	}
	have, err := f.objs.Remotes()
	if err != nil {
		return err
	}
	// Put first, then delete: an entry that stays is never missing.
	if err := f.putRemotes(want, have); err != nil {
		if errors.Is(err, bpf.ErrInvalid) {
			return fmt.Errorf("network %s: %w (%w)", n.ID, err, datapath.ErrInvalid)
		}
		return fmt.Errorf("network %s: %w", n.ID, err)
	}
	var errs []error
	for _, r := range have {
		if _, ok := want[r.Addr]; r.Network == id && !ok {
			errs = append(errs, f.objs.DeleteRemote(id, r.Addr))
			delete(f.written, remoteKey{id, r.Addr})
		}
	}
	return errors.Join(errs...)
}

// bpfRemotes checks remotes against n and returns them by address.
func bpfRemotes(id bpf.NetID, n datapath.Network, remotes []datapath.Remote) (map[netip.Addr]bpf.Remote, error) {
	bad := func(r datapath.Remote, why string) error {
		return fmt.Errorf("network %s: remote %s (MAC %s, node %s): %s: %w", n.ID, r.Addr, r.MAC, r.Node, why, datapath.ErrInvalid)
	}
	out := make(map[netip.Addr]bpf.Remote, len(remotes))
	for _, r := range remotes {
		switch {
		case !r.Addr.Is4() || !n.Subnet.Contains(r.Addr) || r.Addr == n.Gateway:
			return nil, bad(r, fmt.Sprintf("the address must be an IPv4 host address of %s other than the gateway", n.Subnet))
		case len(r.MAC) != 6 || r.MAC[0]&1 != 0 || [6]byte(r.MAC) == [6]byte{}:
			return nil, bad(r, "the MAC must be a 6-byte unicast address")
		case !r.Node.Is4() || r.Node.IsUnspecified() || r.Node.IsMulticast() || r.Node.IsLoopback():
			return nil, bad(r, "the node must be a unicast IPv4 address")
		}
		if old, ok := out[r.Addr]; ok && (old.Node != r.Node || old.MAC.String() != r.MAC.String()) {
			return nil, bad(r, "the address is listed twice, differently")
		}
		out[r.Addr] = bpf.Remote{Network: id, Addr: r.Addr, MAC: r.MAC, Node: r.Node}
	}
	return out, nil
}

// syncOverlay makes the remotes map hold exactly s.Remotes of the overlay
// networks in nets, and removes the tunnel device once none is left.
func (f *Forwarder) syncOverlay(nets map[string]datapath.Network, s datapath.State) error {
	var errs []error
	overlay := map[bpf.NetID]bool{}
	for id, n := range nets {
		if n.Driver == datapath.DriverOverlay {
			overlay[netID(id)] = true
			if err := f.setRemotes(n, s.Remotes[id]); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if have, err := f.objs.Remotes(); err != nil {
		errs = append(errs, err)
	} else {
		for _, r := range have {
			if !overlay[r.Network] {
				errs = append(errs, f.objs.DeleteRemote(r.Network, r.Addr))
				delete(f.written, remoteKey{r.Network, r.Addr})
			}
		}
	}
	if len(overlay) == 0 {
		errs = append(errs, f.deleteTunnel())
	}
	return errors.Join(errs...)
}

// overlayStatus describes the tunnel for Status: the device, its port,
// the remotes it reaches, and overlay networks whose MTU leaves no room
// for the VXLAN header (the redirect skips MTU checks, so their big
// packets would leave fragmented).
func (f *Forwarder) overlayStatus(st *datapath.Status) {
	var nets []datapath.Network
	for _, s := range f.nets {
		if s.net.Driver == datapath.DriverOverlay {
			nets = append(nets, s.net)
		}
	}
	if f.hostCfg.TunnelIfindex == 0 && len(nets) == 0 {
		return
	}
	remotes := "?"
	if rs, err := f.objs.Remotes(); err == nil {
		remotes = fmt.Sprint(len(rs))
	}
	st.Details = append(st.Details, fmt.Sprintf("tunnel %s (flow-based VXLAN, UDP port %d, local %s over %s): tc (%s ingress); %s, %s remote endpoints",
		tunDevice, f.tunnelPort(), f.opts.Tunnel.Local, f.underlayName, f.tcModeLabel(), count(len(nets), "overlay network", "overlay networks"), remotes))
	if f.underlayMTU == 0 {
		return
	}
	for _, n := range nets {
		mtu := n.MTU
		if mtu == 0 {
			mtu = 1500
		}
		if limit := f.underlayMTU - datapath.VXLANOverhead; mtu > limit {
			st.Warnings = append(st.Warnings, fmt.Sprintf("overlay network %s: MTU %d is more than %s's %d minus the VXLAN overhead (%d): large packets leave fragmented", n.ID, mtu, f.underlayName, f.underlayMTU, limit))
		}
	}
}
