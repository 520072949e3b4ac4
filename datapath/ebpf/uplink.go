package ebpf

import (
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/fabricnet/fabric/bpf"
	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns"
)

// Pins of the uplink's programs.
const (
	pinUplinkIngress = "uplink-ingress"
	pinUplinkEgress  = "uplink-egress"
	pinUplinkXDP     = "uplink-xdp"
)

// attachUplink puts the NAT programs on the uplink: masquerade and the
// replies of published ports at tc egress, published-port DNAT and the
// replies of masqueraded flows at tc ingress, and, where it pays, the
// ingress part again at XDP.
func (f *Forwarder) attachUplink() error {
	up, err := bpf.LoadUplink(f.objs, nil)
	if err != nil {
		return err
	}
	f.up = up
	if !f.hasUp {
		f.xdp = "off (no uplink)"
		return nil
	}
	idx := f.uplink.ifindex
	if err := f.attachTC(f.linkPin(pinUplinkIngress), idx, up.FromUplink(), ebpf.AttachTCXIngress); err != nil {
		return fmt.Errorf("uplink %s: %w", f.uplink.name, err)
	}
	if err := f.attachTC(f.linkPin(pinUplinkEgress), idx, up.ToUplink(), ebpf.AttachTCXEgress); err != nil {
		return fmt.Errorf("uplink %s: %w", f.uplink.name, err)
	}
	return f.attachXDP()
}

// attachXDP applies --xdp. auto attaches native XDP only on a driver where
// it pays: not on veth (native XDP on a veth turns off TSO on its peer and
// halved throughput in a prototype) nor on virtual devices without a
// driver hook; there the same logic runs at tc ingress.
func (f *Forwarder) attachXDP() error {
	pin := f.linkPin(pinUplinkXDP)
	switch f.opts.XDP {
	case XDPOff:
		f.xdp = "off (--xdp off)"
		return detach(pin)
	}
	l, err := f.nl.LinkByIndex(f.uplink.ifindex)
	if err != nil {
		return fmt.Errorf("uplink %s: %w", f.uplink.name, err)
	}
	if t := l.Type(); t != "device" && f.opts.XDP == XDPAuto {
		f.xdp = fmt.Sprintf("off (auto: uplink %s is a %s; native XDP does not pay there, the tc program does the same work)", f.uplink.name, t)
		return detach(pin)
	}
	err = f.pinLink(pin, f.up.XDP(), nil, func() (xl link.Link, err error) {
		err = netns.Do(f.nsPath, func() error {
			xl, err = link.AttachXDP(link.XDPOptions{Program: f.up.XDP(), Interface: f.uplink.ifindex, Flags: link.XDPDriverMode})
			return err
		})
		return xl, err
	})
	if err != nil {
		if f.opts.XDP == XDPNative {
			return fmt.Errorf("native XDP on uplink %s (--xdp native; use auto or off): %w", f.uplink.name, err)
		}
		f.xdp = fmt.Sprintf("off (auto: driver of %s refused native XDP: %v)", f.uplink.name, err)
		return nil
	}
	f.xdp = "native on " + f.uplink.name
	return nil
}

// checkXDP refuses --xdp native on a veth uplink: a veth hands XDP
// checksum-partial frames, so NAT there would write wrong TCP/UDP
// checksums (and its peer loses TSO).
func (f *Forwarder) checkXDP() error {
	if f.opts.XDP != XDPNative || !f.hasUp {
		return nil
	}
	l, err := f.nl.LinkByIndex(f.uplink.ifindex)
	if err != nil {
		return fmt.Errorf("uplink %s: %w", f.uplink.name, err)
	}
	if l.Type() == "veth" {
		return fmt.Errorf("--xdp native on uplink %s: it is a veth, where XDP NAT cannot work correctly; use --xdp auto or off: %w", f.uplink.name, datapath.ErrInvalid)
	}
	return nil
}

// addUplinkMetrics adds conntrack use and the uplink's programs.
func (f *Forwarder) addUplinkMetrics(m *datapath.Metrics) {
	if f.up == nil {
		return
	}
	if n, c, err := f.objs.ConntrackStats(); err == nil {
		m.HasConntrack, m.ConntrackEntries, m.ConntrackCapacity = true, n, c
		// The estimate dips while entries are being inserted; a counter
		// must not.
		if e, err := f.objs.ConntrackEvictions(n); err == nil && e > f.ctEvictions {
			f.ctEvictions = e
		}
		m.ConntrackEvictions = f.ctEvictions
	}
	if f.hasUp {
		m.Programs[f.tcHook()+"-uplink"] = 2
		if strings.HasPrefix(f.xdp, "native") {
			m.Programs["xdp-native"] = 1
		}
	}
}
