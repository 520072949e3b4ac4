package plumb

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
)

// A parent named IFACE.VID that does not exist is created as an 802.1q
// sub-interface and marked with VLANAlias. The kernel ignores an alias given
// at creation, so the link is born under a temporary name derived from the
// network ID (VLANTempName), down, gets its alias, and only then is renamed
// to IFACE.VID and set up. A crash in between therefore never leaves an
// unmarked IFACE.VID that would later pass for the user's own link: it
// leaves fv-<id>, which is fabric's by name and adopted by the next ensure.
// An IFACE.VID that exists is used as it is, whoever made it; it is deleted
// with the network only if it carries this network's alias.

// links is the part of a netlink handle that parent and VLAN handling
// uses. *netlink.Handle implements it; a fake stands in for it in tests on
// kernels built without 802.1q.
type links interface {
	LinkByName(name string) (netlink.Link, error)
	LinkByIndex(index int) (netlink.Link, error)
	LinkList() ([]netlink.Link, error)
	LinkAdd(link netlink.Link) error
	LinkDel(link netlink.Link) error
	LinkSetAlias(link netlink.Link, alias string) error
	LinkSetName(link netlink.Link, name string) error
	LinkSetUp(link netlink.Link) error
}

var _ links = (*netlink.Handle)(nil)

// parentLinks finds, checks and makes parents in the host namespace.
type parentLinks struct {
	h   links
	log *slog.Logger
}

func (h *Host) parents() parentLinks { return parentLinks{h: h.nl, log: h.log} }

func VLANAlias(networkID string) string { return datapath.OwnerPrefix + "vlan:" + networkID }

// VLANTempName is where a VLAN sub-interface is born (see above).
func VLANTempName(networkID string) string { return "fv-" + idPrefix(networkID) }

func idPrefix(id string) string { return id[:min(12, len(id))] }

// lookup returns n's parent if it exists and is usable; it creates
// nothing. Only lookups by name and index: it runs on every ensure.
func (p parentLinks) lookup(n datapath.Network) (netlink.Link, error) {
	link, err := p.h.LinkByName(n.Parent)
	if IsNotFound(err) {
		if base, _, ok := SplitVLAN(n.Parent); ok {
			b, err := p.h.LinkByName(base)
			switch {
			case IsNotFound(err):
				return nil, parentMissingf(n, "parent %s and its base %s do not exist", n.Parent, base)
			case err == nil && !IsUp(b):
				return nil, parentMissingf(n, "base %s of VLAN parent %s is down", base, n.Parent)
			}
			return nil, parentMissingf(n, "VLAN parent %s does not exist (ensuring the network creates it)", n.Parent)
		}
		return nil, parentMissingf(n, "parent %s does not exist", n.Parent)
	}
	if err != nil {
		return nil, fmt.Errorf("network %s: look up parent %s: %w", n.ID, n.Parent, err)
	}
	return link, p.usable(n, link)
}

// usable refuses a parent that is down, or a VLAN whose base is gone or
// down: children on it would exist but carry nothing.
func (p parentLinks) usable(n datapath.Network, link netlink.Link) error {
	// The base first: a down base takes its VLANs down, and is the cause.
	if err := p.baseUp(n, link); err != nil {
		return err
	}
	if !IsUp(link) {
		return parentMissingf(n, "parent %s is down", n.Parent)
	}
	return nil
}

// baseUp refuses a VLAN parent whose base is down; any other link passes.
func (p parentLinks) baseUp(n datapath.Network, link netlink.Link) error {
	base, err := p.vlanBase(link)
	if err != nil {
		return fmt.Errorf("network %s: %w", n.ID, err)
	}
	if base != nil && !IsUp(base) {
		return parentMissingf(n, "base %s of VLAN parent %s is down", base.Attrs().Name, n.Parent)
	}
	return nil
}

// vlanBase returns the base of a VLAN link in the same namespace, nil for
// any other link.
func (p parentLinks) vlanBase(link netlink.Link) (netlink.Link, error) {
	a := link.Attrs()
	if link.Type() != "vlan" || a.ParentIndex == 0 || a.NetNsID >= 0 {
		return nil, nil
	}
	base, err := p.h.LinkByIndex(a.ParentIndex)
	if err != nil {
		return nil, fmt.Errorf("look up base of %s: %w", a.Name, err)
	}
	return base, nil
}

// ensure returns n's parent, usable, creating the VLAN sub-interface when
// the parent is IFACE.VID and missing; created tells whether it did. A
// down VLAN that fabric made for n is set up again; any other down parent
// is reported, never touched.
func (p parentLinks) ensure(n datapath.Network) (_ netlink.Link, created bool, err error) {
	link, err := p.h.LinkByName(n.Parent)
	if err == nil {
		if link.Attrs().Alias == VLANAlias(n.ID) && !IsUp(link) {
			if err := p.setVLANUp(n, link); err != nil {
				return nil, false, err
			}
			if link, err = p.h.LinkByName(n.Parent); err != nil {
				return nil, false, fmt.Errorf("network %s: look up parent %s: %w", n.ID, n.Parent, err)
			}
		}
		return link, false, p.usable(n, link)
	}
	if !IsNotFound(err) {
		return nil, false, fmt.Errorf("network %s: look up parent %s: %w", n.ID, n.Parent, err)
	}
	base, vid, ok := SplitVLAN(n.Parent)
	if !ok {
		return nil, false, parentMissingf(n, "parent %s does not exist", n.Parent)
	}
	link, err = p.createVLAN(n, base, vid)
	if err != nil {
		return nil, false, err
	}
	return link, true, nil
}

// setVLANUp brings up fabric's own VLAN, which the kernel refuses while
// its base is down.
func (p parentLinks) setVLANUp(n datapath.Network, link netlink.Link) error {
	if err := p.baseUp(n, link); err != nil {
		return err
	}
	if err := p.h.LinkSetUp(link); err != nil {
		return fmt.Errorf("network %s: set VLAN parent %s up: %w", n.ID, n.Parent, err)
	}
	p.log.Info("set VLAN sub-interface up", "link", n.Parent, "network", n.ID)
	return nil
}

// createVLAN adds VLAN vid on base as n.Parent (see the comment at the top
// of the file for the order of steps). It is removed again if a step fails.
func (p parentLinks) createVLAN(n datapath.Network, baseName string, vid int) (_ netlink.Link, err error) {
	base, err := p.h.LinkByName(baseName)
	if IsNotFound(err) {
		return nil, parentMissingf(n, "base %s of VLAN parent %s does not exist", baseName, n.Parent)
	}
	if err != nil {
		return nil, fmt.Errorf("network %s: look up base %s: %w", n.ID, baseName, err)
	}
	if !IsUp(base) {
		return nil, parentMissingf(n, "base %s of VLAN parent %s is down", baseName, n.Parent)
	}
	// link is what the rollback deletes: not the named result, which a
	// failing return sets to nil before deferred calls run.
	link, err := p.leftover(n, base, vid)
	if err != nil {
		return nil, err
	}
	tmp := VLANTempName(n.ID)
	if link == nil {
		la := netlink.NewLinkAttrs()
		la.Name = tmp
		la.ParentIndex = base.Attrs().Index
		if err := p.h.LinkAdd(&netlink.Vlan{LinkAttrs: la, VlanId: vid, VlanProtocol: netlink.VLAN_PROTOCOL_8021Q}); err != nil {
			return nil, p.vlanAddError(n, base, vid, err)
		}
		if link, err = p.h.LinkByName(tmp); err != nil {
			return nil, fmt.Errorf("network %s: look up new VLAN %s: %w", n.ID, tmp, err)
		}
	}
	defer func() {
		if err != nil {
			if delErr := p.h.LinkDel(link); delErr != nil && !IsNotFound(delErr) {
				p.log.Warn("roll back VLAN sub-interface", "link", link.Attrs().Name, "err", delErr)
			}
		}
	}()
	if link.Attrs().Alias != VLANAlias(n.ID) {
		if err := p.h.LinkSetAlias(link, VLANAlias(n.ID)); err != nil {
			return nil, fmt.Errorf("network %s: set alias on new VLAN %s: %w", n.ID, tmp, err)
		}
	}
	if err := p.h.LinkSetName(link, n.Parent); err != nil {
		return nil, fmt.Errorf("network %s: rename new VLAN %s to %s: %w", n.ID, tmp, n.Parent, err)
	}
	if err := p.h.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("network %s: set new VLAN %s up: %w", n.ID, n.Parent, err)
	}
	made, err := p.h.LinkByName(n.Parent)
	if err != nil {
		return nil, fmt.Errorf("network %s: look up new VLAN %s: %w", n.ID, n.Parent, err)
	}
	p.log.Info("created VLAN sub-interface", "link", n.Parent, "vid", vid, "base", baseName, "network", n.ID)
	return made, nil
}

// leftover returns the VLAN a crash left under the temporary name, if it
// is the one wanted now; a stale one of this network is deleted.
func (p parentLinks) leftover(n datapath.Network, base netlink.Link, vid int) (netlink.Link, error) {
	tmp := VLANTempName(n.ID)
	link, err := p.h.LinkByName(tmp)
	if IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("network %s: look up %s: %w", n.ID, tmp, err)
	}
	a := link.Attrs()
	v, isVLAN := link.(*netlink.Vlan)
	mine := a.Alias == VLANAlias(n.ID) || (a.Alias == "" && isVLAN)
	switch {
	case mine && isVLAN && v.VlanId == vid && a.ParentIndex == base.Attrs().Index:
		p.log.Info("adopting VLAN sub-interface left half-made", "link", tmp, "network", n.ID)
		return link, nil
	case a.Alias == VLANAlias(n.ID):
		p.log.Info("deleting stale VLAN sub-interface", "link", tmp, "network", n.ID)
		if err := p.h.LinkDel(link); err != nil && !IsNotFound(err) {
			return nil, fmt.Errorf("network %s: delete stale %s: %w", n.ID, tmp, err)
		}
		return nil, nil
	default:
		return nil, Invalidf("network %s: link %s exists and is not fabric's; remove it", n.ID, tmp)
	}
}

// vlanAddError explains the failures a user can act on.
func (p parentLinks) vlanAddError(n datapath.Network, base netlink.Link, vid int, err error) error {
	switch {
	case errors.Is(err, unix.EOPNOTSUPP):
		return fmt.Errorf("%w: network %s: create VLAN %d on %s: the kernel has no 802.1q support (CONFIG_VLAN_8021Q): %w", datapath.ErrInvalid, n.ID, vid, base.Attrs().Name, err)
	case errors.Is(err, unix.EEXIST):
		// One VID per base: another link has it. Naming it is worth a dump
		// on this error path.
		holder := "another link"
		if all, lerr := RetryDump(p.h.LinkList); lerr == nil {
			for _, l := range all {
				if v, ok := l.(*netlink.Vlan); ok && v.VlanId == vid && v.ParentIndex == base.Attrs().Index {
					holder = v.Name
				}
			}
		}
		return Invalidf("network %s: VLAN %d on %s already exists as %s; use parent=%s or remove it", n.ID, vid, base.Attrs().Name, holder, holder)
	default:
		return fmt.Errorf("network %s: create VLAN %d on %s: %w", n.ID, vid, base.Attrs().Name, err)
	}
}

// deleteVLAN removes n's parent if it is a VLAN fabric made for n, and a
// half-made one under the temporary name. Anything else stays.
func (p parentLinks) deleteVLAN(n datapath.Network) error {
	_, vid, ok := SplitVLAN(n.Parent)
	if !ok {
		return nil
	}
	for _, name := range []string{n.Parent, VLANTempName(n.ID)} {
		link, err := p.h.LinkByName(name)
		if IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("network %s: look up %s: %w", n.ID, name, err)
		}
		v, isVLAN := link.(*netlink.Vlan)
		mine := link.Attrs().Alias == VLANAlias(n.ID) ||
			(name != n.Parent && link.Attrs().Alias == "" && isVLAN && v.VlanId == vid)
		if !mine {
			p.log.Debug("leaving parent not created by fabric for this network", "link", name, "alias", link.Attrs().Alias, "network", n.ID)
			continue
		}
		if err := p.h.LinkDel(link); err != nil && !IsNotFound(err) {
			return fmt.Errorf("network %s: delete VLAN %s: %w", n.ID, name, err)
		}
		p.log.Info("deleted VLAN sub-interface", "link", name, "network", n.ID)
	}
	return nil
}
