package agent

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/fabricnet/fabric/cluster"
	"github.com/fabricnet/fabric/cmd/internal/api"
)

// Overlay address conflicts.
//
// While the underlay is partitioned each side sees the other as dead and
// can grant the same static address (--ip) or the same block; when the
// sides merge, the cluster keeps one grant (last writer wins on the claim
// or lease record) and two nodes publish an endpoint with one address.
// The rest of the cluster forwards the address to the holder of the grant
// (remotesLocked orders it first, the datapath skips the other). The
// endpoint here that lost keeps running but is cut off from the other
// hosts for that address: it is not removed or renumbered behind the
// user's back (a running workload would lose its address without a
// word). Instead the conflict is shown until it is resolved: a status
// warning naming the sandbox, the address and the winner, the
// fabric_overlay_address_conflicts gauge, and one log line when it
// starts. Removing (or recreating with another address) the sandbox ends it.

// addressConflict is a local endpoint whose overlay address another node
// also publishes and holds.
type addressConflict struct {
	network, sandbox string
	ip               netip.Addr
	winner           string // the node the cluster forwards the address to
}

func (c addressConflict) String() string {
	return fmt.Sprintf("overlay address %s of sandbox %s on network %q is also used on node %s, which holds it: "+
		"this sandbox lost the address conflict (after a partition) and other hosts reach %s there; remove it or recreate it with another address",
		c.ip, c.sandbox, c.network, c.winner, c.ip)
}

// checkConflictsLocked finds the local overlay endpoints that lost an
// address conflict and logs each new one once. It runs with every cluster
// sync.
func (a *Agent) checkConflictsLocked(members map[string]cluster.Member) {
	if a.cl == nil {
		return
	}
	found := map[string]addressConflict{}
	for _, n := range a.sortedNetworks() {
		if n.Driver != api.DriverOverlay {
			continue
		}
		for id, c := range a.lostAddressesLocked(n, members) {
			found[id] = c
		}
	}
	old := a.glue.setConflicts(found)
	for id, c := range found {
		if _, known := old[id]; !known {
			a.log.Warn("overlay address conflict lost to another node; the sandbox keeps running but other hosts reach the winner",
				"network", c.network, "sandbox", c.sandbox, "ip", c.ip, "winner", c.winner)
		}
	}
	for id, c := range old {
		if _, still := found[id]; !still {
			a.log.Info("overlay address conflict over", "network", c.network, "sandbox", c.sandbox, "ip", c.ip)
		}
	}
}

// lostAddressesLocked returns, by endpoint ID, the endpoints of overlay
// network n here whose address an alive node also publishes and the
// cluster gives to that node: the holder of its claim or block lease when
// it is one of the publishers, else the lowest node name (the order of
// remotesLocked).
func (a *Agent) lostAddressesLocked(n *networkRec, members map[string]cluster.Member) map[string]addressConflict {
	self := a.cl.Name()
	local := map[netip.Addr]*endpointRec{}
	for _, ep := range a.endpoints {
		if ep.NetworkID == n.ID {
			local[ep.Addr.Addr()] = ep
		}
	}
	if len(local) == 0 {
		return nil
	}
	others := map[netip.Addr][]string{}
	for _, ep := range a.cl.Endpoints(n.Name) {
		if ep.Node == self || local[ep.IP] == nil {
			continue
		}
		if m, ok := members[ep.Node]; !ok || m.State != cluster.MemberAlive {
			continue
		}
		others[ep.IP] = append(others[ep.IP], ep.Node)
	}
	if len(others) == 0 {
		return nil
	}
	holder := a.addressHolders(n.Name)
	out := map[string]addressConflict{}
	for ip, nodes := range others {
		winner := conflictWinner(self, nodes, holder(ip))
		if winner == self {
			continue
		}
		ep := local[ip]
		out[ep.ID] = addressConflict{network: n.Name, sandbox: ep.Sandbox, ip: ip, winner: winner}
	}
	return out
}

// conflictWinner is the publisher of an address the cluster forwards it
// to: its holder when the holder publishes it, else the lowest name.
func conflictWinner(self string, others []string, holder string) string {
	all := append([]string{self}, others...)
	if slices.Contains(all, holder) {
		return holder
	}
	return slices.Min(all)
}
