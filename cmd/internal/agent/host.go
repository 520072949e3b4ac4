package agent

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/cmd/internal/ipam"
	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// Host is everything the agent core asks the host's kernel outside the
// datapath: the routes a new subnet must not overlap, the interfaces a
// network names (a bridge name, a macvlan parent, the tunnel's interface)
// and the named namespaces of sandboxes. netlinkHost is the real one; the
// core's unit tests use a fake, so they run without root. The datapath and
// the namespaces wired in by path (extns.go) are not behind it: those are
// the kernel's business, tested in real namespaces.
type Host interface {
	// HostRoutes lists the IPv4 destinations the host already reaches:
	// its routes and the prefixes of its addresses, without the default
	// route.
	HostRoutes() ([]netip.Prefix, error)
	// Link describes the interface called name; errNoLink if there is none.
	Link(name string) (HostLink, error)
	// LinkWithAddr describes the interface holding the IPv4 address ip;
	// errNoLink if none does.
	LinkWithAddr(ip netip.Addr) (HostLink, error)
	// CreateNamespace creates the named network namespace of a sandbox
	// (netns.Path(name)); DeleteNamespace removes it, and is not an error
	// if it is gone. NamespaceExists says whether one of that name exists.
	CreateNamespace(name string) error
	DeleteNamespace(name string) error
	NamespaceExists(name string) bool
	// VethPeer describes the host interface hostName and names the other
	// end of the veth pair it is part of if that end is in the namespace
	// at nsPath ("" if it is not, or hostName is no veth); errNoLink if
	// hostName does not exist. Adopting a runtime's pair checks it.
	VethPeer(hostName, nsPath string) (host HostLink, peer string, err error)
}

// HostLink is what the agent needs to know of a host interface.
type HostLink struct {
	Name  string
	Type  string // "veth", "bridge", …
	Alias string // "fabric:..." on interfaces fabric made
	Up    bool
	MTU   int
}

// errNoLink is Host's answer for an interface that does not exist.
var errNoLink = errors.New("no such interface")

// netlinkHost asks the kernel, in the namespace at nsPath ("" = the
// agent's own).
type netlinkHost struct{ nsPath string }

var _ Host = netlinkHost{}

// handle opens a netlink handle in the host namespace.
func (h netlinkHost) handle() (*netlink.Handle, error) {
	if h.nsPath == "" {
		nh, err := netlink.NewHandle()
		if err != nil {
			return nil, fmt.Errorf("netlink handle: %w", err)
		}
		return nh, nil
	}
	return netns.HandleAt(h.nsPath)
}

func (h netlinkHost) HostRoutes() ([]netip.Prefix, error) {
	var nh *netlink.Handle
	if h.nsPath != "" {
		var err error
		if nh, err = netns.HandleAt(h.nsPath); err != nil {
			return nil, err
		}
		defer nh.Close()
	}
	routes, err := ipam.HostRoutesIn(nh)
	if err != nil {
		return nil, fmt.Errorf("list host routes: %w", err)
	}
	return routes, nil
}

func (h netlinkHost) Link(name string) (HostLink, error) {
	nh, err := h.handle()
	if err != nil {
		return HostLink{}, err
	}
	defer nh.Close()
	l, err := nh.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return HostLink{}, fmt.Errorf("interface %s: %w", name, errNoLink)
		}
		return HostLink{}, fmt.Errorf("look up interface %s: %w", name, err)
	}
	return hostLink(l), nil
}

func (h netlinkHost) LinkWithAddr(ip netip.Addr) (HostLink, error) {
	nh, err := h.handle()
	if err != nil {
		return HostLink{}, err
	}
	defer nh.Close()
	links, err := nh.LinkList()
	if err != nil {
		return HostLink{}, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		addrs, err := nh.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			continue
		}
		for _, ad := range addrs {
			if a, ok := netip.AddrFromSlice(ad.IP); ok && a.Unmap() == ip {
				return hostLink(l), nil
			}
		}
	}
	return HostLink{}, fmt.Errorf("address %s: %w", ip, errNoLink)
}

func hostLink(l netlink.Link) HostLink {
	at := l.Attrs()
	return HostLink{Name: at.Name, Type: l.Type(), Alias: at.Alias, Up: at.RawFlags&unix.IFF_UP != 0, MTU: at.MTU}
}

func (h netlinkHost) VethPeer(hostName, nsPath string) (HostLink, string, error) {
	nh, err := h.handle()
	if err != nil {
		return HostLink{}, "", err
	}
	defer nh.Close()
	l, err := nh.LinkByName(hostName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return HostLink{}, "", fmt.Errorf("interface %s: %w", hostName, errNoLink)
		}
		return HostLink{}, "", fmt.Errorf("look up interface %s: %w", hostName, err)
	}
	if l.Type() != "veth" {
		return hostLink(l), "", nil
	}
	sb, err := netns.HandleAt(nsPath)
	if err != nil {
		return HostLink{}, "", err
	}
	defer sb.Close()
	peer, err := plumb.VethPeerIn(sb, l)
	if err != nil {
		return hostLink(l), "", nil
	}
	return hostLink(l), peer.Attrs().Name, nil
}

func (netlinkHost) CreateNamespace(name string) error {
	_, err := netns.CreateNamed(name)
	return err
}

func (netlinkHost) DeleteNamespace(name string) error { return netns.DeleteNamed(name) }

func (netlinkHost) NamespaceExists(name string) bool { return netns.IsNamespace(netns.Path(name)) }
