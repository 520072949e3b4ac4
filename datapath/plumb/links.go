package plumb

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
)

// ensureOnlyAddr leaves exactly one IPv4 address, want, on a link fabric owns.
func EnsureOnlyAddr(h *netlink.Handle, link netlink.Link, want *net.IPNet) error {
	addrs, err := RetryDump(func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_V4) })
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

// claim accepts a link fabric made for this object and refuses anything
// else: links of other objects and links fabric did not make. The kernel
// ignores an alias given at creation, so it is set right after; a link left
// without alias by a crash in between is recognised by the MAC fabric
// derived from the same ID and gets its alias now.
func (h *Host) Claim(link netlink.Link, id string, mac net.HardwareAddr) error {
	a := link.Attrs()
	want := OwnerAlias(id)
	switch {
	case a.Alias == want:
		return nil
	case a.Alias == "" && bytes.Equal(a.HardwareAddr, mac):
		if err := h.nl.LinkSetAlias(link, want); err != nil {
			return fmt.Errorf("set alias on %s: %w", a.Name, err)
		}
		a.Alias = want
		return nil
	case strings.HasPrefix(a.Alias, datapath.OwnerPrefix):
		return Invalidf("link %s already belongs to %s (wanted for %s)", a.Name, a.Alias, want)
	default:
		return Invalidf("link %s exists and is not managed by fabric; pick another name or remove it", a.Name)
	}
}

// OwnLink returns the link called name if it carries alias, the mark
// fabric gives what it makes; nil if there is no such link or it is
// someone else's.
func OwnLink(h *netlink.Handle, name, alias string) (netlink.Link, error) {
	link, err := h.LinkByName(name)
	if IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if link.Attrs().Alias != alias {
		return nil, nil
	}
	return link, nil
}

// MarkNew looks up the link just created as name and gives it alias (the
// kernel ignores an alias given at creation). The link is returned when
// only the marking failed, for the caller's rollback.
func MarkNew(h *netlink.Handle, name, alias string) (netlink.Link, error) {
	link, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("look up new link %s: %w", name, err)
	}
	if err := h.LinkSetAlias(link, alias); err != nil {
		return link, fmt.Errorf("set alias on %s: %w", name, err)
	}
	link.Attrs().Alias = alias
	return link, nil
}

// HostVethMAC derives the host-side veth MAC from the endpoint ID.
func HostVethMAC(id string) net.HardwareAddr { return DerivedMAC("fabric-veth:" + id) }

// DerivedMAC is a locally administered unicast MAC hashed from seed.
func DerivedMAC(seed string) net.HardwareAddr {
	sum := sha256.Sum256([]byte(seed))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&0xfe | 0x02
	return mac
}

// EnsureSysctl writes value to /proc/sys/name unless it holds it already
// (in the namespace of the calling thread).
func EnsureSysctl(name, value string) error {
	return ensureSysctlAt(unix.AT_FDCWD, "/proc/sys/"+name, name, value)
}

// ensureSysctlAt is EnsureSysctl on path, relative to dirfd. The file is
// opened once, read and written through the same descriptor: each path
// lookup under /proc/sys walks past the same-named entries of every other
// network namespace that looked there (one per sandbox), so it costs more
// the more sandboxes exist.
func ensureSysctlAt(dirfd int, path, name, value string) error {
	fd, err := openSysctlAt(dirfd, path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EROFS) {
		// Read-only here: fine as long as it holds value already.
		fd, err = openSysctlAt(dirfd, path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return fmt.Errorf("read sysctl %s: %w", name, err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 128)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return fmt.Errorf("read sysctl %s: %w", name, err)
	}
	if strings.TrimSpace(string(buf[:n])) == value {
		return nil
	}
	if _, err := unix.Pwrite(fd, []byte(value), 0); err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", name, value, err)
	}
	return nil
}

// VethPeerIn returns the other end of the host veth host if it is in the
// namespace sb is a handle of: a veth there whose peer index is host's and
// whose index is host's peer index. It is how a pair a container runtime
// moved into a namespace is recognised before fabric adopts it.
func VethPeerIn(sb *netlink.Handle, host netlink.Link) (netlink.Link, error) {
	if host.Type() != "veth" {
		return nil, fmt.Errorf("%s is a %s, not a veth", host.Attrs().Name, host.Type())
	}
	peer, err := sb.LinkByIndex(host.Attrs().ParentIndex)
	if err != nil || peer.Type() != "veth" || peer.Attrs().ParentIndex != host.Attrs().Index {
		return nil, fmt.Errorf("the other end of %s is not in that namespace", host.Attrs().Name)
	}
	return peer, nil
}
