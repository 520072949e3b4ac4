package dockerplugin

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// Docker's remote driver hands a container an interface only as a link
// that exists in the host's namespace when Join returns: Docker moves it
// into the container's namespace (at once for `network connect`, once
// runc has made the namespace for `docker run`), renames it DstPrefix+N,
// gives it the address from CreateEndpoint, and sets the default route
// via Join's gateway, choosing among all the container's networks as it
// does with its own drivers. So Join makes a veth pair here and hands
// Docker one end; once Docker has put it in the namespace with its
// address, the plugin connects the namespace with api.Connect.Link and
// the agent adopts the pair as the endpoint (the host side gets fabric's
// tc programs or bridge port; routes stay Docker's).

// linkNames are the pair's names for Docker endpoint id: the host side,
// which becomes the endpoint's host interface, and the end Docker moves.
func linkNames(id string) (host, peer string) {
	if len(id) > 12 {
		id = id[:12]
	}
	return "fdh" + id, "fdc" + id
}

// removeUnsavedPairsLocked deletes the pairs a previous run made in Join
// and was killed before it saved them (with mu held). Join answers only
// after the save, so Docker never took such a pair, and the endpoint's
// record (saved by CreateEndpoint, before Join) names no link: the pair
// is found by the name Join gives it. Run calls this before it serves, so
// no Join is under way; a link the agent adopted stays.
func (p *Plugin) removeUnsavedPairsLocked() {
	for _, ep := range p.st.Endpoints {
		if ep.Link != "" {
			continue
		}
		host, _ := linkNames(ep.ID)
		l, err := netlink.LinkByName(host)
		if err != nil {
			continue // none (Join never got that far, or not a veth network)
		}
		removed, err := removeUnadopted(l)
		if err != nil {
			p.log.Warn("docker plugin: pair of a Join that never finished", "endpoint", shortID(ep.ID), "err", err)
		} else if removed {
			p.log.Info("docker plugin: removed the pair of a Join that never finished", "endpoint", shortID(ep.ID), "link", host)
		}
	}
}

// handsLink says whether Join hands Docker a veth pair on a fabric
// network of this driver (macvlan and ipvlan endpoints are children of a
// parent interface that fabric makes in the namespace itself).
func handsLink(driver string) bool {
	return driver == "" || driver == "bridge" || driver == "overlay"
}

// makePair creates the pair in the host's namespace, both ends down (the
// datapath brings the host side up once it has adopted it), the end for
// Docker with the endpoint's MAC (Docker keeps it; fabric's datapath
// expects it from the first frame).
func makePair(host, peer string, mtu int, mac net.HardwareAddr) error {
	if err := removePair(host); err != nil {
		return err
	}
	la := netlink.NewLinkAttrs()
	la.Name = host
	if mtu > 0 {
		la.MTU = mtu
	}
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: peer, PeerHardwareAddr: mac}); err != nil {
		return fmt.Errorf("fabric: create veth pair %s/%s for docker: %w", host, peer, err)
	}
	return nil
}

// removePair deletes a pair made for Docker that fabric never adopted (no
// owner alias yet); an adopted one is the agent's to remove. Deleting one
// end deletes the other, wherever it is.
func removePair(host string) error {
	l, err := netlink.LinkByName(host)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("fabric: look up %s: %w", host, err)
	}
	_, err = removeUnadopted(l)
	return err
}

// removeUnadopted deletes l, with its peer, if it is a veth fabric never
// adopted, and reports whether it did.
func removeUnadopted(l netlink.Link) (bool, error) {
	if l.Type() != "veth" || l.Attrs().Alias != "" {
		return false, nil
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return false, fmt.Errorf("fabric: delete veth %s: %w", l.Attrs().Name, err)
	}
	return true, nil
}

// peerReady says whether Docker has moved the other end of host into the
// namespace at key and given it addr (Docker renames and addresses the
// link before it sets routes, which fabric leaves to it anyway).
func peerReady(key, host string, addr netip.Addr) bool {
	l, err := netlink.LinkByName(host)
	if err != nil || !netns.IsNamespace(key) {
		return false
	}
	h, err := netns.HandleAt(key)
	if err != nil {
		return false
	}
	defer h.Close()
	peer, err := plumb.VethPeerIn(h, l)
	if err != nil {
		return false
	}
	addrs, err := h.AddrList(peer, netlink.FAMILY_V4)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
			return true
		}
	}
	return false
}
