package ebpf

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/bpf"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// NAT source ports for masquerade: above Linux's default ephemeral range
// (32768-60999), so masqueraded flows do not compete with the host's own
// connections for the same ports.
const (
	natPortMin = 61000
	natPortMax = 65535
)

// uplinkInfo is the interface that leads out of the host.
type uplinkInfo struct {
	name    string
	ifindex int
	addr    netip.Addr // its first IPv4 address; invalid if it has none
}

// findUplink returns the configured uplink, or the interface of the IPv4
// default route. ok is false when there is none (an isolated host: no
// masquerade, no published ports from outside).
func (f *Forwarder) findUplink() (uplinkInfo, bool, error) {
	var l netlink.Link
	var err error
	if f.opts.Uplink != "" {
		l, err = f.nl.LinkByName(f.opts.Uplink)
		if err != nil {
			return uplinkInfo{}, false, fmt.Errorf("uplink %s: %w", f.opts.Uplink, err)
		}
	} else {
		routes, err := plumb.RetryDump(func() ([]netlink.Route, error) {
			return f.nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return uplinkInfo{}, false, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.LinkIndex > 0 {
				if l, err = f.nl.LinkByIndex(r.LinkIndex); err != nil {
					return uplinkInfo{}, false, fmt.Errorf("default route's interface %d: %w", r.LinkIndex, err)
				}
				break
			}
		}
		if l == nil {
			return uplinkInfo{}, false, nil
		}
	}
	u := uplinkInfo{name: l.Attrs().Name, ifindex: l.Attrs().Index}
	addrs, err := plumb.RetryDump(func() ([]netlink.Addr, error) { return f.nl.AddrList(l, netlink.FAMILY_V4) })
	if err != nil {
		return uplinkInfo{}, false, fmt.Errorf("addresses of uplink %s: %w", u.name, err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
			u.addr = ip
			break
		}
	}
	return u, true, nil
}

// setHostConfig tells the programs the host's namespace cookie, uplink and
// masquerade address.
func (f *Forwarder) setHostConfig(u uplinkInfo) error {
	fd, err := unix.Open(f.nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open host netns %s: %w", f.nsPath, err)
	}
	defer unix.Close(fd)
	cookie, err := bpf.NetNSCookie(fd)
	if err != nil {
		return err
	}
	c := f.hostCfg // the tunnel, adopted or not
	c.NetNSCookie, c.SNATAddr, c.UplinkIfindex = cookie, u.addr, u.ifindex
	c.NATPortMin, c.NATPortMax = natPortMin, natPortMax
	if err := f.objs.SetHostConfig(c); err != nil {
		return err
	}
	f.hostCfg = c
	return nil
}

// attachSockHooks loads the cgroup socket hooks (host-local clients of
// published ports) and attaches them to the cgroup v2 root through pinned
// links, or swaps the new programs into the links a previous run pinned.
func (f *Forwarder) attachSockHooks() error {
	root, err := bpf.CgroupV2Root()
	if err != nil {
		return err
	}
	mapPin := filepath.Join(f.opts.BPFRoot, "maps", "sock_reverse")
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{}}
	if m, err := ebpf.LoadPinnedMap(mapPin, nil); err == nil {
		defer m.Close()
		opts.MapReplacements["sock_reverse"] = m
	}
	s, err := bpf.LoadSock(f.objs, opts)
	if err != nil && len(opts.MapReplacements) > 0 {
		f.log.Warn("pinned sock_reverse map does not fit this build; recreating it", "err", err)
		_ = os.Remove(mapPin)
		s, err = bpf.LoadSock(f.objs, nil)
	}
	if err != nil {
		return err
	}
	f.sock = s
	if _, ok := opts.MapReplacements["sock_reverse"]; !ok {
		_ = os.Remove(mapPin)
		if err := s.ReverseMap().Pin(mapPin); err != nil {
			return fmt.Errorf("pin %s: %w", mapPin, err)
		}
	}
	for _, h := range s.Hooks() {
		err := f.pinLink(f.linkPin("sock-"+h.Name), h.Program, nil, func() (link.Link, error) {
			l, err := link.AttachCgroup(link.CgroupOptions{Path: root, Attach: h.Attach, Program: h.Program})
			if err != nil {
				return nil, fmt.Errorf("attach socket hook %s to cgroup %s: %w", h.Name, root, err)
			}
			return l, nil
		})
		if err != nil {
			return err
		}
	}
	f.cgroup = root
	return nil
}
