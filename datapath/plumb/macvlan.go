package plumb

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
	fabricns "github.com/fabricnet/fabric/datapath/netns"
)

// An endpoint of a macvlan or ipvlan network is a child of the network's
// parent, created directly inside the sandbox namespace (the request goes
// to the host namespace, where the parent's index means something, and
// names the sandbox as the new link's home), so its name never has to be
// free on the host. The child's MAC is ep.MAC for macvlan; an ipvlan child
// and a passthru macvlan child carry the parent's MAC, and changing theirs
// would change the parent's, so ep.MAC is ignored there.
//
// The kernel deletes the children when their parent goes away; the next
// EnsureNetwork and EnsureEndpoint make them again.

// ensureChild creates or repairs the endpoint's child link and, if the
// network has a host shim, the host route to it. A child made here is
// removed again if a later step fails.
func (h *Host) EnsureChild(n datapath.Network, ep datapath.Endpoint) (created bool, err error) {
	parent, err := h.parents().lookup(n)
	if err != nil {
		return false, fmt.Errorf("endpoint %s: %w", ep.ID, err)
	}
	mtu := childMTU(n, parent)
	sb, err := OpenSandbox(ep)
	if err != nil {
		return false, fmt.Errorf("endpoint %s: %w", ep.ID, err)
	}
	defer sb.Close()

	child, err := h.existingChild(sb, n, ep, parent)
	if err != nil {
		return false, fmt.Errorf("endpoint %s: %w", ep.ID, err)
	}
	if child == nil {
		if child, err = h.createChild(sb, n, ep, parent, mtu); err != nil {
			return false, fmt.Errorf("endpoint %s: %w", ep.ID, err)
		}
		created = true
		defer func() {
			if err != nil {
				// Through the sandbox handle, with the index read there:
				// the same name may well exist on the host.
				if delErr := sb.nl.LinkDel(child); delErr != nil && !IsNotFound(delErr) {
					h.log.Warn("roll back endpoint link", "link", ep.IfName, "sandbox", ep.NetNSPath, "err", delErr)
				}
			}
		}()
		if err := h.faults.after(h.faults.ChildCreated); err != nil {
			return created, err
		}
	}
	gw := n.Gateway
	if isL3(n) {
		gw = netip.Addr{} // no ARP, no next hop: the host's routing decides
	}
	if err := configureSandboxLink(sb.nl, child, ep, childMAC(n, ep), mtu, gw, created); err != nil {
		return created, fmt.Errorf("endpoint %s: %s in %s: %w", ep.ID, ep.IfName, ep.NetNSPath, err)
	}
	if err := ensureSandboxShimRoutes(sb.nl, child, n, h.shimRoutes, created); err != nil {
		return created, fmt.Errorf("endpoint %s: %s in %s: %w", ep.ID, ep.IfName, ep.NetNSPath, err)
	}
	if err := h.ensureShimRoute(n, ep); err != nil {
		return created, err
	}
	return created, nil
}

// existingChild returns the sandbox's ep.IfName if it is a child of the
// right kind and mode on parent. Anything else under that name (a veth
// from an earlier life of the sandbox, a child of an old parent) is
// deleted so that the child can be made.
func (h *Host) existingChild(sb *Sandbox, n datapath.Network, ep datapath.Endpoint, parent netlink.Link) (netlink.Link, error) {
	link, err := sb.nl.LinkByName(ep.IfName)
	if IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up %s in sandbox: %w", ep.IfName, err)
	}
	ok, err := h.isChildOf(sb, link, n, parent)
	if err != nil || ok {
		return link, err
	}
	h.log.Info("replacing sandbox link that is not the endpoint's child", "link", ep.IfName, "type", link.Type(), "endpoint", ep.ID)
	if err := sb.nl.LinkDel(link); err != nil && !IsNotFound(err) {
		return nil, fmt.Errorf("delete %s %s in sandbox: %w", link.Type(), ep.IfName, err)
	}
	return nil, nil
}

// isChildOf reports whether link (in the sandbox) is a child of parent (in
// the host namespace) with n's kind and mode. The parent index is only
// meaningful together with the namespace it refers to, so the sandbox's ID
// for the host namespace is compared too.
func (h *Host) isChildOf(sb *Sandbox, link netlink.Link, n datapath.Network, parent netlink.Link) (bool, error) {
	switch l := link.(type) {
	case *netlink.Macvlan:
		if n.Driver != datapath.DriverMacvlan || l.Mode != macvlanModes[n.Mode] {
			return false, nil
		}
	case *netlink.IPVlan:
		if n.Driver != datapath.DriverIPvlan || l.Mode != ipvlanModes[n.Mode] {
			return false, nil
		}
	default:
		return false, nil
	}
	if link.Attrs().ParentIndex != parent.Attrs().Index {
		return false, nil
	}
	hostID, err := sb.nl.GetNetNsIdByFd(int(h.hostNS))
	if err != nil {
		return false, fmt.Errorf("ID of the host namespace in sandbox: %w", err)
	}
	return hostID >= 0 && link.Attrs().NetNsID == hostID, nil
}

// newChild describes the child to create: named, sized and (macvlan)
// addressed at layer 2 at birth, down, in the sandbox.
func newChild(n datapath.Network, ep datapath.Endpoint, name string, parent netlink.Link, mtu int, sandboxNS int) netlink.Link {
	la := netlink.NewLinkAttrs()
	la.Name = name
	la.ParentIndex = parent.Attrs().Index
	la.MTU = mtu
	la.Namespace = netlink.NsFd(sandboxNS)
	if n.Driver == datapath.DriverIPvlan {
		return &netlink.IPVlan{LinkAttrs: la, Mode: ipvlanModes[n.Mode]}
	}
	la.HardwareAddr = childMAC(n, ep)
	return &netlink.Macvlan{LinkAttrs: la, Mode: macvlanModes[n.Mode]}
}

// childMAC is the MAC the child must have, nil where the parent's is used
// (or, for ep.MAC nil, where the kernel picks one).
func childMAC(n datapath.Network, ep datapath.Endpoint) net.HardwareAddr {
	if n.Driver != datapath.DriverMacvlan || isPassthru(n) {
		return nil
	}
	return ep.MAC
}

// ChildTempName is the name a child is born under when its own name is
// taken on the host (see createChild): fabric's by construction, and
// derived from the endpoint so a crash's leftover is found again.
func ChildTempName(endpointID string) string {
	sum := sha256.Sum256([]byte("fabric-child:" + endpointID))
	return "fc-" + hex.EncodeToString(sum[:5])
}

// createChild makes the child in the sandbox under ep.IfName. Older
// kernels (6.1 does, 6.18 does not) look the new link's name up in the
// namespace the request is sent to, the host's, and refuse it if the host
// has a link of that name (its own eth0, say); the child is then born
// under a temporary name and renamed inside the sandbox.
//
// After LinkAdd the library looks the new link's index up by name in the
// handle's (host) namespace, so the object passed in is never used again:
// the link is read back from the sandbox.
func (h *Host) createChild(sb *Sandbox, n datapath.Network, ep datapath.Endpoint, parent netlink.Link, mtu int) (netlink.Link, error) {
	what := fmt.Sprintf("%s %s in %s", childKind(n), ep.IfName, ep.NetNSPath)
	if h.faults.RenamedChild {
		return h.createChildRenamed(sb, n, ep, parent, mtu)
	}
	err := h.nl.LinkAdd(newChild(n, ep, ep.IfName, parent, mtu, int(sb.ns)))
	if errors.Is(err, unix.EEXIST) {
		if _, lerr := sb.nl.LinkByName(ep.IfName); lerr == nil {
			return nil, Invalidf("interface %s appeared in sandbox %s meanwhile", ep.IfName, ep.NetNSPath)
		}
		return h.createChildRenamed(sb, n, ep, parent, mtu)
	}
	if err != nil {
		return nil, childAddError(n, n.Parent, what, err)
	}
	link, err := sb.nl.LinkByName(ep.IfName)
	if err != nil {
		return nil, fmt.Errorf("look up new %s in sandbox: %w", ep.IfName, err)
	}
	h.log.Debug("created endpoint link", "link", ep.IfName, "kind", childKind(n), "parent", n.Parent, "endpoint", ep.ID)
	return link, nil
}

func (h *Host) createChildRenamed(sb *Sandbox, n datapath.Network, ep datapath.Endpoint, parent netlink.Link, mtu int) (netlink.Link, error) {
	tmp := ChildTempName(ep.ID)
	if old, err := sb.nl.LinkByName(tmp); err == nil && old.Type() == childKind(n) {
		if err := sb.nl.LinkDel(old); err != nil && !IsNotFound(err) {
			return nil, fmt.Errorf("delete half-made %s in sandbox: %w", tmp, err)
		}
	}
	if err := h.nl.LinkAdd(newChild(n, ep, tmp, parent, mtu, int(sb.ns))); err != nil {
		return nil, childAddError(n, n.Parent, fmt.Sprintf("%s %s (as %s) in %s", childKind(n), ep.IfName, tmp, ep.NetNSPath), err)
	}
	link, err := sb.nl.LinkByName(tmp)
	if err != nil {
		return nil, fmt.Errorf("look up new %s in sandbox: %w", tmp, err)
	}
	if err := sb.nl.LinkSetName(link, ep.IfName); err != nil {
		if delErr := sb.nl.LinkDel(link); delErr != nil && !IsNotFound(delErr) {
			h.log.Warn("roll back endpoint link", "link", tmp, "sandbox", ep.NetNSPath, "err", delErr)
		}
		return nil, fmt.Errorf("rename %s to %s in sandbox: %w", tmp, ep.IfName, err)
	}
	if link, err = sb.nl.LinkByName(ep.IfName); err != nil {
		return nil, fmt.Errorf("look up new %s in sandbox: %w", ep.IfName, err)
	}
	h.log.Debug("created endpoint link under a temporary name", "link", ep.IfName, "tmp", tmp, "kind", childKind(n), "parent", n.Parent, "endpoint", ep.ID)
	return link, nil
}

// childAddError explains the kernel's refusals that follow from how
// macvlan and ipvlan share a parent.
func childAddError(n datapath.Network, parent, what string, err error) error {
	switch {
	case errors.Is(err, unix.EOPNOTSUPP):
		return fmt.Errorf("%w: network %s: create %s: the kernel has no %s support (CONFIG_%s): %w",
			datapath.ErrInvalid, n.ID, what, childKind(n), map[string]string{"macvlan": "MACVLAN", "ipvlan": "IPVLAN"}[childKind(n)], err)
	case errors.Is(err, unix.EINVAL) && isPassthru(n):
		return fmt.Errorf("%w: network %s: create %s: macvlan passthru mode gives parent %s to a single child and it already has one (another endpoint or a macvlan of someone else): %w",
			datapath.ErrInvalid, n.ID, what, parent, err)
	case errors.Is(err, unix.EINVAL) && n.Driver == datapath.DriverMacvlan:
		return fmt.Errorf("network %s: create %s on %s (a passthru child may hold the parent): %w", n.ID, what, parent, err)
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("%w: network %s: create %s: parent %s is taken by another kind of child (a parent carries either macvlan or ipvlan links, not both): %w",
			datapath.ErrInvalid, n.ID, what, parent, err)
	default:
		return fmt.Errorf("network %s: create %s on %s: %w", n.ID, what, parent, err)
	}
}

// deleteChild removes the endpoint's child from its sandbox and its route
// through the host shim. A sandbox or child that is gone already is fine.
func (h *Host) DeleteChild(n datapath.Network, ep datapath.Endpoint) error {
	if err := h.deleteShimRoute(n, ep); err != nil {
		return err
	}
	if !fabricns.IsNamespace(ep.NetNSPath) {
		return nil
	}
	sb, err := OpenSandbox(ep)
	if err != nil {
		return fmt.Errorf("endpoint %s: %w", ep.ID, err)
	}
	defer sb.Close()
	link, err := sb.nl.LinkByName(ep.IfName)
	if IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("endpoint %s: look up %s in sandbox: %w", ep.ID, ep.IfName, err)
	}
	if link.Type() != childKind(n) {
		h.log.Warn("not deleting sandbox link of another kind", "link", ep.IfName, "type", link.Type(), "endpoint", ep.ID)
		return nil
	}
	if err := sb.nl.LinkDel(link); err != nil && !IsNotFound(err) {
		return fmt.Errorf("endpoint %s: delete %s in sandbox: %w", ep.ID, ep.IfName, err)
	}
	return nil
}
