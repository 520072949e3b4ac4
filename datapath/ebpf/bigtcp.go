package ebpf

import (
	"github.com/vishvananda/netlink"
)

// bigTCPSize is the largest IPv4 TCP packet the host's own sockets may
// hand an endpoint's host veth at once: BIG TCP for IPv4 (Linux 6.3+),
// the size Cilium uses too. Host-to-sandbox streams (a published port
// reached from 127.0.0.1, whose connection the socket program points
// straight at the sandbox) then cost a third of the per-packet work of
// 64 KiB packets. Only the host side is raised: the sandbox's own sends,
// which the endpoint program parses, stay within 64 KiB, and forwarded
// traffic is segmented by the kernel wherever a device wants less.
const bigTCPSize = 192 << 10

// bigTCPSupported reports whether the kernel knows a per-device IPv4 GSO
// limit at all: it reports one for lo from Linux 6.3 on.
func bigTCPSupported(nl *netlink.Handle) bool {
	lo, err := nl.LinkByName("lo")
	return err == nil && lo.Attrs().GSOIPv4MaxSize > 0
}

// ensureBigTCP raises the host veth's IPv4 GSO limit to bigTCPSize where
// the kernel has BIG TCP. A kernel whose veth cannot take it (ERANGE:
// its TSO limit is lower) turns the feature off for this datapath, once,
// with a log line: the endpoint works as before.
func (d *Datapath) ensureBigTCP(host netlink.Link) {
	if !d.bigTCP || host.Attrs().GSOIPv4MaxSize >= bigTCPSize {
		return
	}
	if err := d.host.NL().LinkSetGSOIPv4MaxSize(host, bigTCPSize); err != nil {
		d.bigTCP = false
		d.log.Info("BIG TCP off: the kernel refused a larger IPv4 GSO size on an endpoint veth", "link", host.Attrs().Name, "err", err)
		return
	}
	host.Attrs().GSOIPv4MaxSize = bigTCPSize
}
