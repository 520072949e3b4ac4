package agent

import (
	"errors"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// A container runtime that moves, names and addresses the interface
// itself (Docker, with the interface a network driver hands it in Join)
// gets a veth pair made in the host's namespace before the container's
// namespace exists; once the runtime has moved one end in, `Connect` with
// api.Connect.Link adopts the pair as the endpoint: the host side keeps
// its name and becomes fabric's (alias, tc programs or bridge port), the
// sandbox side keeps the runtime's name, and the namespace's routes stay
// the runtime's.

// adoptLink makes ep the endpoint of the pair whose host side is link and
// whose other end is in sb's namespace.
func (a *Agent) adoptLink(sb *sandboxRec, ep *endpointRec, link string) error {
	if sb.Mode != api.ModeExternal {
		return invalidf("link %s: only a namespace given by path can adopt a runtime's interface", link)
	}
	n := a.networks[ep.NetworkID]
	if n == nil || (n.Driver != api.DriverBridge && n.Driver != api.DriverOverlay) {
		return invalidf("link %s: only bridge and overlay networks take a runtime's veth pair", link)
	}
	if err := validIfName(link); err != nil {
		return invalidf("link %q: %v", link, err)
	}
	if o := a.endpointWithHostIf(link); o != nil {
		return conflictf("link %s is already endpoint %s", link, o.ID)
	}
	host, peer, err := a.host.VethPeer(link, sb.NetNS)
	switch {
	case errors.Is(err, errNoLink):
		return invalidf("link %s not found on the host: %v", link, err)
	case err != nil:
		return err
	case host.Type != "veth" || host.Alias != "":
		return invalidf("link %s is not a veth pair waiting for adoption (type %s, alias %q)", link, host.Type, host.Alias)
	case peer == "":
		return invalidf("the other end of link %s is not in namespace %s", link, sb.NetNS)
	}
	ep.HostIfName, ep.IfName, ep.Adopted = link, peer, true
	return nil
}

// adoptedBefore returns sb's endpoint on n that adopted link already, if
// any: adopting the same pair again changes nothing.
func (a *Agent) adoptedBefore(sb *sandboxRec, n *networkRec, link string) *endpointRec {
	if link == "" {
		return nil
	}
	for _, ep := range a.sandboxEndpoints(sb.Name) {
		if ep.Adopted && ep.NetworkID == n.ID && ep.HostIfName == link && ep.Phase != phaseRemoving {
			return ep
		}
	}
	return nil
}
