package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/vishvananda/netlink"
)

// kernelRef does the bare kernel steps of one sandbox set-up, without
// fabric, in a host namespace that holds an agent's sandboxes: a named
// namespace (as the agent makes it, loopback up), a veth pair made with
// one end in it, an address on each side, both ends up; with a bridge,
// the host end is a port of the reference's own bridge (which holds the
// gateway address) instead of carrying an address. The set-up is ready
// when the address answers ping from the host namespace. It gives the
// kernel's own growth with the number of namespaces and interfaces on the
// host, measured right next to fabric's creates.
type kernelRef struct {
	tag     string
	nsPath  string
	pg      *pinger
	nl      *netlink.Handle
	bridge  *netlink.Bridge // nil: point-to-point (the eBPF datapath's shape)
	anchor  netlink.Link    // a veth port that keeps the bridge's carrier up
	subnet  byte            // 100.<subnet>.0.0/16 holds the reference's addresses
	made    int
	nameFor func(string) string
}

// Reference addresses: 100.80.0.0/16 (point-to-point /30s) and
// 100.81.0.0/16 (the bridge's subnet), outside the lab's networks.
const (
	refP2PSubnet    = 80
	refBridgeSubnet = 81
)

func newKernelRef(tag, nsPath string, pg *pinger, withBridge bool, nameFor func(string) string) (*kernelRef, error) {
	nl, err := netns.HandleAt(nsPath)
	if err != nil {
		return nil, err
	}
	k := &kernelRef{tag: tag, nsPath: nsPath, pg: pg, nl: nl, subnet: refP2PSubnet, nameFor: nameFor}
	if !withBridge {
		return k, nil
	}
	k.subnet = refBridgeSubnet
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("zrb%s%d", tag, os.Getpid()%100000)}}
	if err := nl.LinkAdd(br); err != nil {
		nl.Close()
		return nil, fmt.Errorf("reference bridge: %w", err)
	}
	k.bridge = br
	gw := &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(100, refBridgeSubnet, 0, 1), Mask: net.CIDRMask(16, 32)}}
	if err := nl.AddrAdd(br, gw); err != nil {
		k.close()
		return nil, fmt.Errorf("reference bridge address: %w", err)
	}
	if err := nl.LinkSetUp(br); err != nil {
		k.close()
		return nil, fmt.Errorf("reference bridge up: %w", err)
	}
	// Fabric's bridge always has ports. A bridge that loses its last port
	// loses its carrier, and regains it through the kernel's link watch,
	// which for a bridge runs at most once a second: without a port that
	// stays, each set-up would wait for it.
	if br2, err := nl.LinkByName(br.Name); err == nil {
		br.Index = br2.Attrs().Index
	}
	anchor := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("zra%s%d", tag, os.Getpid()%100000)},
		PeerName: fmt.Sprintf("zrA%s%d", tag, os.Getpid()%100000)}
	if err := nl.LinkAdd(anchor); err != nil {
		k.close()
		return nil, fmt.Errorf("reference bridge anchor: %w", err)
	}
	k.anchor = anchor
	for _, name := range []string{anchor.Name, anchor.PeerName} {
		l, err := nl.LinkByName(name)
		if err == nil && name == anchor.Name {
			err = nl.LinkSetMaster(l, br)
		}
		if err == nil {
			err = nl.LinkSetUp(l)
		}
		if err != nil {
			k.close()
			return nil, fmt.Errorf("reference bridge anchor %s: %w", name, err)
		}
	}
	return k, nil
}

func (k *kernelRef) close() {
	if k.anchor != nil {
		_ = k.nl.LinkDel(k.anchor)
	}
	if k.bridge != nil {
		_ = k.nl.LinkDel(k.bridge)
	}
	k.nl.Close()
}

// addrs returns set-up i's host and namespace addresses with their prefix
// length: a /30 of its own, or an address in the bridge's /16.
func (k *kernelRef) addrs(i int) (host, inNS netip.Addr, bits int) {
	if k.bridge != nil {
		j := 2 + i%65000
		return netip.AddrFrom4([4]byte{100, k.subnet, 0, 1}), netip.AddrFrom4([4]byte{100, k.subnet, byte(j >> 8), byte(j)}), 16
	}
	j := (i % 16000) * 4
	base := [4]byte{100, k.subnet, byte(j >> 8), byte(j)}
	host, inNS = netip.AddrFrom4(base), netip.AddrFrom4(base)
	return host.Next(), inNS.Next().Next(), 30
}

// timedSetup does one reference set-up, times it until the ping answers,
// and removes it again (the namespace goes; the kernel takes the veth).
func (k *kernelRef) timedSetup(ctx context.Context) (float64, error) {
	i := k.made
	k.made++
	name := k.nameFor(fmt.Sprintf("zr%s%d", k.tag, i))
	hostIf := fmt.Sprintf("zr%s%d", k.tag, i)
	t0 := time.Now()
	path, err := netns.CreateNamed(name)
	if err != nil {
		return 0, fmt.Errorf("reference namespace: %w", err)
	}
	defer func() { _ = netns.DeleteNamed(name) }()
	ready, err := k.plug(ctx, path, hostIf, i)
	if err != nil {
		if l, lerr := k.nl.LinkByName(hostIf); lerr == nil {
			_ = k.nl.LinkDel(l)
		}
		return 0, err
	}
	return ms(ready.Sub(t0)), nil
}

// plug makes set-up i's veth, addresses and links in the namespace at
// path and returns when its address answered ping.
func (k *kernelRef) plug(ctx context.Context, path, hostIf string, i int) (time.Time, error) {
	sbns, err := os.Open(path)
	if err != nil {
		return time.Time{}, err
	}
	defer sbns.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostIf}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(sbns.Fd()))}
	if err := k.nl.LinkAdd(veth); err != nil {
		return time.Time{}, fmt.Errorf("reference veth: %w", err)
	}
	hostAddr, nsAddr, bits := k.addrs(i)
	if k.bridge != nil {
		if err := k.nl.LinkSetMaster(veth, k.bridge); err != nil {
			return time.Time{}, fmt.Errorf("reference bridge port: %w", err)
		}
	} else if err := k.nl.AddrAdd(veth, prefixAddr(hostAddr, bits)); err != nil {
		return time.Time{}, fmt.Errorf("reference host address: %w", err)
	}
	if err := k.nl.LinkSetUp(veth); err != nil {
		return time.Time{}, fmt.Errorf("reference host end up: %w", err)
	}
	in, err := netns.HandleAt(path)
	if err != nil {
		return time.Time{}, err
	}
	defer in.Close()
	peer, err := in.LinkByName("eth0")
	if err != nil {
		return time.Time{}, fmt.Errorf("reference peer: %w", err)
	}
	if err := in.AddrAdd(peer, prefixAddr(nsAddr, bits)); err != nil {
		return time.Time{}, fmt.Errorf("reference namespace address: %w", err)
	}
	if err := in.LinkSetUp(peer); err != nil {
		return time.Time{}, fmt.Errorf("reference peer up: %w", err)
	}
	// A link just set up passes packets once the kernel's link watch has
	// activated its queue (operstate up); an ARP request sent before is
	// dropped and retried only a second later. Fabric's own steps after
	// the link is up give the link watch that time; the reference waits
	// for it.
	if err := waitOperUp(ctx, k.nl, hostIf); err != nil {
		return time.Time{}, err
	}
	if err := waitOperUp(ctx, in, "eth0"); err != nil {
		return time.Time{}, err
	}
	if k.pg == nil {
		return time.Time{}, errors.New("no pinger")
	}
	return k.pg.waitReply(ctx, nsAddr)
}

// waitOperUp waits (bounded) until link name is operationally up.
func waitOperUp(ctx context.Context, nl *netlink.Handle, name string) error {
	deadline := time.Now().Add(pingCap)
	for {
		l, err := nl.LinkByName(name)
		if err != nil {
			return fmt.Errorf("reference link %s: %w", name, err)
		}
		if l.Attrs().OperState == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("reference link %s not up within %s (operstate %s)", name, pingCap, l.Attrs().OperState)
		}
		time.Sleep(pingEvery)
	}
}

func prefixAddr(a netip.Addr, bits int) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, 32)}}
}
