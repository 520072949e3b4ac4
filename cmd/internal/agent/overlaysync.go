package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/fabricnet/fabric/cluster"
	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/dns"
	"github.com/fabricnet/fabric/cmd/internal/ipam"
	"github.com/fabricnet/fabric/datapath"
)

// syncClusterLocked makes the local overlay networks and the datapath's
// remote endpoints match the cluster's state.
func (a *Agent) syncClusterLocked(ctx context.Context) {
	if a.cl == nil {
		return
	}
	want := map[string]cluster.Network{}
	for _, cn := range a.cl.Networks() {
		want[overlayID(cn.ID)] = cn
	}
	a.removeGoneOverlays(ctx, want)
	a.materializeNew(ctx, want)
	members := a.memberIndex()
	changed := a.programRemotes(ctx, members)
	a.checkConflictsLocked(members)
	// Names of remote endpoints follow (new ones, aliases changed, gone).
	if a.glue.dnsChanged(a.cl.StateVersion(), changed) {
		a.refreshRemoteDNS()
	}
}

// removeGoneOverlays removes the overlay networks gone from the cluster
// here too, unless endpoints still use them (possible only after a
// partition).
func (a *Agent) removeGoneOverlays(ctx context.Context, want map[string]cluster.Network) {
	for _, n := range a.sortedNetworks() {
		if n.Driver != api.DriverOverlay {
			continue
		}
		if _, ok := want[n.ID]; ok {
			continue
		}
		if users := a.networkUsers(n.ID); len(users) > 0 {
			a.health.setUnhealthy(n.ID, "removed from the cluster while sandboxes here still use it ("+strings.Join(users, ", ")+"); remove them")
			continue
		}
		if err := a.deleteNetwork(ctx, n); err != nil {
			a.log.Warn("remove overlay network", "network", n.Name, "err", err)
		}
		a.dropRemotesLocked(n.ID)
	}
}

// materializeNew sets up the cluster networks this host does not have
// yet, in ID order; one that cannot be is retried every sync and logged
// when the reason changes.
func (a *Agent) materializeNew(ctx context.Context, want map[string]cluster.Network) {
	ids := make([]string, 0, len(want))
	for id := range want {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if _, ok := a.networks[id]; ok {
			continue
		}
		cn := want[id]
		if err := a.materialize(ctx, cn); err != nil {
			if a.glue.setUnhealthy(cn.Name, err.Error()) {
				a.log.Warn("cannot set up overlay network here", "network", cn.Name, "subnet", cn.Subnet, "err", err)
			}
			continue
		}
		a.glue.setUnhealthy(cn.Name, "")
	}
}

// programRemotes gives the datapath the remote endpoints of every overlay
// network whose remotes changed, and says whether any did.
func (a *Agent) programRemotes(ctx context.Context, members map[string]cluster.Member) (changed bool) {
	for _, n := range a.sortedNetworks() {
		if n.Driver != api.DriverOverlay {
			continue
		}
		r, names := a.remotesLocked(n, members)
		if remotesEqual(r, a.glue.remotesOf(n.ID)) {
			a.glue.setNames(n.ID, names) // aliases may have changed
			continue
		}
		changed = true
		if err := a.dp.SetRemotes(ctx, n.datapath(), r); err != nil {
			a.log.Warn("program remote endpoints", "network", n.Name, "err", err)
			continue
		}
		a.glue.setRemotes(n.ID, r, names)
	}
	return changed
}

func (a *Agent) sortedNetworks() []*networkRec {
	out := make([]*networkRec, 0, len(a.networks))
	for _, n := range a.networks {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (a *Agent) networkUsers(id string) []string {
	var users []string
	for _, ep := range a.endpoints {
		if ep.NetworkID == id {
			users = append(users, ep.Sandbox)
		}
	}
	sort.Strings(users)
	return users
}

// materialize creates the local record and kernel objects of a cluster
// network this host does not have yet.
func (a *Agent) materialize(ctx context.Context, cn cluster.Network) error {
	id := overlayID(cn.ID)
	if err := a.checkGossipedOverlay(cn.Subnet, cn.Gateway); err != nil {
		return err
	}
	for _, o := range a.networks {
		if o.Name == cn.Name {
			return fmt.Errorf("a local %s network of the same name exists here", o.Driver)
		}
		if ipam.Overlaps(o.Subnet, cn.Subnet) {
			return fmt.Errorf("its subnet %s overlaps local network %q (%s)", cn.Subnet, o.Name, o.Subnet)
		}
	}
	n := &networkRec{
		ID: id, Name: cn.Name, Driver: api.DriverOverlay, Subnet: cn.Subnet, Gateway: cn.Gateway,
		Internal: cn.Internal, Options: cn.Options, Bridge: "fo-" + id[:12],
		VNI: cn.VNI, Cluster: cn.ID.String(), Created: time.Now().UTC(), Phase: phaseCreating,
	}
	mtu, err := a.overlayMTU()
	if err != nil {
		return err
	}
	n.MTU = mtu
	if v, ok := cn.Options["mtu"]; ok {
		m, err := strconv.Atoi(v)
		if err == nil && m >= 576 && m < mtu {
			n.MTU = m
		}
	}
	return a.addNetwork(ctx, n)
}

// overlayMTU is the MTU of the underlay interface holding the tunnel
// address, minus what VXLAN adds.
func (a *Agent) overlayMTU() (int, error) {
	if !a.opts.Tunnel.Local.IsValid() {
		return 0, errors.New("no tunnel address: the agent needs --cluster-bind with an IP (or an advertised address) for overlay traffic")
	}
	l, err := a.host.LinkWithAddr(a.opts.Tunnel.Local)
	if errors.Is(err, errNoLink) {
		return 0, fmt.Errorf("tunnel address %s is on no interface of this host", a.opts.Tunnel.Local)
	}
	if err != nil {
		return 0, err
	}
	return l.MTU - datapath.VXLANOverhead, nil
}

// memberIndex maps node names to members as this node sees them (and
// remembers the addresses of the alive ones).
func (a *Agent) memberIndex() map[string]cluster.Member {
	return a.glue.noteMembers(a.cl.Members(), a.cl.NumAlive())
}

// remotesLocked lists the endpoints of overlay network n on other nodes
// that are alive, and their DNS names. Until this agent has met the cluster
// (just after a restart) a node it has not heard of yet is assumed alive at
// its remembered address, so forwarding does not stop while gossip catches
// up. The names are exactly those of the endpoints this host forwards to,
// so a dead node's names go with its forwarding entries.
//
// An address two nodes publish (a lease collision after a partition heals)
// is listed for both, the holder of its lease first (its claim, else its
// block's lease; without one, the lower node name): the datapath keeps the
// first and skips, logs and counts the other, so the rest of the network
// keeps being updated. An address an endpoint here uses is never a remote.
func (a *Agent) remotesLocked(n *networkRec, members map[string]cluster.Member) ([]datapath.Remote, []dns.Record) {
	self := a.cl.Name()
	local := map[netip.Addr]bool{}
	for _, ep := range a.endpoints {
		if ep.NetworkID == n.ID {
			local[ep.Addr.Addr()] = true
		}
	}
	var cands []remoteCandidate
	seen := map[netip.Addr]int{}
	for _, ep := range a.cl.Endpoints(n.Name) {
		if ep.Node == self || !n.Subnet.Contains(ep.IP) || local[ep.IP] {
			continue
		}
		var node netip.Addr
		if m, ok := members[ep.Node]; ok {
			if m.State != cluster.MemberAlive {
				continue
			}
			node = m.Meta.Addr
		} else {
			node = a.glue.rememberedAddr(ep.Node)
		}
		if !node.IsValid() || len(ep.MAC) != 6 {
			continue
		}
		seen[ep.IP]++
		cands = append(cands, remoteCandidate{
			r:     datapath.Remote{Addr: ep.IP, MAC: slices.Clone(ep.MAC), Node: node},
			node:  ep.Node,
			names: append([]string{ep.Name}, ep.Aliases...),
		})
	}
	holder := func(netip.Addr) string { return "" }
	for _, c := range seen {
		if c > 1 {
			holder = a.addressHolders(n.Name)
			break
		}
	}
	out := orderRemotes(cands, holder)
	var names []dns.Record
	for i, c := range cands {
		if i > 0 && cands[i-1].r.Addr == c.r.Addr {
			continue // the loser of a collision gets no names either
		}
		for _, name := range c.names {
			if name != "" {
				names = append(names, dns.Record{Name: name, Network: n.ID, IP: c.r.Addr})
			}
		}
	}
	return out, names
}

// remoteCandidate is a remote endpoint as gossip has it: the node that
// publishes it and its names.
type remoteCandidate struct {
	r     datapath.Remote
	node  string
	names []string
}

// orderRemotes sorts cands (in place) by address and, within an address
// two nodes publish, the holder's entry first, then by node name; it
// returns their remotes in that order.
func orderRemotes(cands []remoteCandidate, holder func(netip.Addr) string) []datapath.Remote {
	slices.SortFunc(cands, func(x, y remoteCandidate) int {
		if c := x.r.Addr.Compare(y.r.Addr); c != 0 {
			return c
		}
		hx, hy := holder(x.r.Addr) == x.node, holder(y.r.Addr) == y.node
		if hx != hy {
			if hx {
				return -1
			}
			return 1
		}
		if c := strings.Compare(x.node, y.node); c != 0 {
			return c
		}
		return strings.Compare(net.HardwareAddr(x.r.MAC).String(), net.HardwareAddr(y.r.MAC).String())
	})
	out := make([]datapath.Remote, 0, len(cands))
	for _, c := range cands {
		out = append(out, c.r)
	}
	return out
}

// addressHolders returns who holds an address of the named network by
// the cluster's leases: the node of its static claim, else of the block
// it is in; "" if nobody does.
func (a *Agent) addressHolders(network string) func(netip.Addr) string {
	claims := map[netip.Addr]string{}
	for _, c := range a.cl.Claims(network) {
		claims[c.IP] = c.Node
	}
	leases := a.cl.Leases(network)
	return func(ip netip.Addr) string {
		if node, ok := claims[ip]; ok {
			return node
		}
		for _, l := range leases {
			if l.Block.Contains(ip) {
				return l.Node
			}
		}
		return ""
	}
}

// dropRemotesLocked forgets the remotes of a network that is gone here.
func (a *Agent) dropRemotesLocked(id string) {
	a.glue.dropNetwork(id)
}

func remotesEqual(x, y []datapath.Remote) bool {
	return len(x) == len(y) && (len(x) == 0 || slices.EqualFunc(x, y, func(p, q datapath.Remote) bool {
		return p.Addr == q.Addr && p.Node == q.Node && net.HardwareAddr(p.MAC).String() == net.HardwareAddr(q.MAC).String()
	}))
}

// clusterRemotesLocked is the remote part of the desired state (for Sync).
func (a *Agent) clusterRemotesLocked() map[string][]datapath.Remote {
	if a.cl == nil {
		return nil
	}
	members := a.memberIndex()
	out := map[string][]datapath.Remote{}
	for _, n := range a.networks {
		if n.Driver == api.DriverOverlay {
			r, names := a.remotesLocked(n, members)
			out[n.ID] = r
			a.glue.setRemotes(n.ID, r, names)
		}
	}
	return out
}
