package agent

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
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
	"github.com/fabricnet/fabric/cmd/internal/store"
	"github.com/fabricnet/fabric/datapath"
)

// Cluster state in the store: the cluster's own snapshot (records and this
// node's allocations) and the last known underlay address of every node,
// so that a restarted agent keeps forwarding to remote endpoints before
// gossip has caught up.
const (
	bucketCluster = "cluster"
	keySnapshot   = "snapshot"
	keyNodes      = "nodes"
)

// settleAfter is how long after start an agent that has not joined anyone
// still trusts remembered node addresses for members it has not seen.
const settleAfter = 15 * time.Second

// clusterSyncInterval re-derives the overlay state even without events, and
// saves the cluster snapshot when it changed.
const clusterSyncInterval = 2 * time.Second

// overlayID is the local ID of a cluster network: derived from the
// cluster's network ID, so every node names it the same.
func overlayID(id cluster.NetworkID) string {
	sum := sha256.Sum256([]byte("overlay:" + id.String()))
	return hex.EncodeToString(sum[:])
}

// probeInterval is how often every peer is probed over the underlay.
const probeInterval = 5 * time.Second

// probe is the last health probe of one peer.
type probe struct {
	rtt time.Duration
	err error
}

// probePeers pings every alive peer every probeInterval until ctx ends.
func (a *Agent) probePeers(ctx context.Context) {
	tick := time.NewTicker(probeInterval)
	defer tick.Stop()
	for {
		res := map[string]probe{}
		for _, m := range a.cl.Members() {
			if m.Name == a.cl.Name() || m.State != cluster.MemberAlive {
				continue
			}
			rtt, err := a.cl.Ping(m.Name)
			res[m.Name] = probe{rtt, err}
		}
		a.probeMu.Lock()
		a.probes = res
		a.probeMu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// clusterState is the agent's side of the cluster, under Agent.mu.
type clusterState struct {
	remotes   map[string][]datapath.Remote // network ID → what the datapath has
	names     map[string][]dns.Record      // network ID → DNS names of those remotes
	nodeAddrs map[string]netip.Addr        // node → underlay address, persisted
	savedVer  uint64                       // cluster state version last saved
	savedRes  uint64                       // this node's reservation version last saved
	dnsVer    uint64                       // cluster state version of the DNS table
	joined    bool                         // another member was seen since start
	started   time.Time
}

// restoreCluster merges the stored snapshot into the cluster and loads the
// remembered node addresses. It runs before the first reconcile.
func (a *Agent) restoreCluster() error {
	a.cs = clusterState{remotes: map[string][]datapath.Remote{}, names: map[string][]dns.Record{}, nodeAddrs: map[string]netip.Addr{}, started: time.Now()}
	if a.cl == nil {
		return nil
	}
	var snap []byte
	err := a.store.View(func(tx *store.Tx) error {
		if _, err := tx.Get(bucketCluster, keySnapshot, &snap); err != nil {
			return err
		}
		_, err := tx.Get(bucketCluster, keyNodes, &a.cs.nodeAddrs)
		return err
	})
	if err != nil {
		return fmt.Errorf("read cluster state: %w", err)
	}
	if a.cs.nodeAddrs == nil {
		a.cs.nodeAddrs = map[string]netip.Addr{}
	}
	if len(snap) > 0 {
		if err := a.cl.Restore(snap); err != nil {
			// Peers hold the same records: losing the snapshot costs a
			// push/pull, not state.
			a.log.Warn("stored cluster snapshot not usable; relearning from peers", "err", err)
		}
	}
	return nil
}

// saveClusterLocked persists the cluster snapshot if it changed.
func (a *Agent) saveClusterLocked(force bool) {
	if a.cl == nil {
		return
	}
	ver := a.cl.StateVersion()
	if !force && ver == a.cs.savedVer {
		return
	}
	res := a.cl.ReservationVersion()
	snap, err := a.cl.Snapshot()
	if err != nil {
		a.log.Warn("cluster snapshot", "err", err)
		return
	}
	err = a.store.Update(func(tx *store.Tx) error {
		if err := tx.Put(bucketCluster, keySnapshot, snap); err != nil {
			return err
		}
		return tx.Put(bucketCluster, keyNodes, a.cs.nodeAddrs)
	})
	if err != nil {
		a.log.Warn("save cluster snapshot", "err", err)
		return
	}
	a.cs.savedVer, a.cs.savedRes = ver, res
}

// saveReservationsLocked saves the snapshot if this node was granted or gave
// back a block or a static address since the last save: the sandbox create
// and remove path, which should not pay a store commit for every endpoint
// record (RunCluster saves the rest within its next tick).
func (a *Agent) saveReservationsLocked() {
	if a.cl == nil || a.cl.ReservationVersion() == a.cs.savedRes {
		return
	}
	a.saveClusterLocked(true)
}

// RunCluster follows the cluster until ctx ends: every change of members,
// networks or endpoints is applied to the host (overlay networks made or
// removed, remote endpoints programmed), and the cluster state is saved.
func (a *Agent) RunCluster(ctx context.Context) {
	if a.cl == nil {
		return
	}
	tick := time.NewTicker(clusterSyncInterval)
	defer tick.Stop()
	go a.probePeers(ctx)
	events := a.cl.Events()
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-events:
			a.logEvent(ev)
			// Coalesce a burst (a joining node brings many records).
			drain := time.After(5 * time.Millisecond)
		more:
			for {
				select {
				case ev := <-events:
					a.logEvent(ev)
				case <-drain:
					break more
				}
			}
		case <-tick.C:
		}
		a.mu.Lock()
		a.syncClusterLocked(ctx)
		a.saveClusterLocked(false)
		a.mu.Unlock()
	}
}

func (a *Agent) logEvent(ev cluster.Event) {
	switch ev.Type {
	case cluster.EventMemberJoined, cluster.EventMemberFailed, cluster.EventMemberLeft:
		a.log.Info("cluster member "+strings.TrimPrefix(ev.Type.String(), "member-"), "node", ev.Member.Name, "addr", ev.Member.Meta.Addr)
	case cluster.EventNetworkConflict:
		a.log.Warn("overlay network lost a conflicting create", "network", ev.Network.Name, "why", ev.Conflict.Error())
		a.health.noteEvent("overlay network " + ev.Conflict.Error())
	case cluster.EventLeaseLost:
		if ev.Lease.Bits() == 32 {
			return // a static address: a sandbox here using it is reported by checkConflictsLocked
		}
		a.log.Error("address block taken away from this node; its endpoints there must be recreated", "block", ev.Lease)
		a.health.noteEvent(fmt.Sprintf("address block %s was taken away from this node (it was gone too long or partitioned); recreate its endpoints", ev.Lease))
	}
}

// syncClusterLocked makes the local overlay networks and the datapath's
// remote endpoints match the cluster's state.
func (a *Agent) syncClusterLocked(ctx context.Context) {
	if a.cl == nil {
		return
	}
	if a.cl.NumAlive() > 1 {
		a.cs.joined = true
	}
	want := map[string]cluster.Network{}
	for _, cn := range a.cl.Networks() {
		want[overlayID(cn.ID)] = cn
	}
	// Gone from the cluster: removed here too, unless endpoints still use
	// it (possible only after a partition).
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
	ids := make([]string, 0, len(want))
	for id := range want {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if _, ok := a.networks[id]; ok {
			continue
		}
		if err := a.materialize(ctx, want[id]); err != nil {
			// Retried every sync; logged when the reason changes.
			if why := err.Error(); a.unhealthyOverlay[want[id].Name] != why {
				a.log.Warn("cannot set up overlay network here", "network", want[id].Name, "subnet", want[id].Subnet, "err", err)
				a.unhealthyOverlay[want[id].Name] = why
			}
			continue
		}
		delete(a.unhealthyOverlay, want[id].Name)
	}
	members := a.memberIndex()
	changed := false
	for _, n := range a.sortedNetworks() {
		if n.Driver != api.DriverOverlay {
			continue
		}
		r, names := a.remotesLocked(n, members)
		if remotesEqual(r, a.cs.remotes[n.ID]) {
			a.cs.names[n.ID] = names // aliases may have changed
			continue
		}
		changed = true
		if err := a.dp.SetRemotes(ctx, n.datapath(), r); err != nil {
			a.log.Warn("program remote endpoints", "network", n.Name, "err", err)
			continue
		}
		a.cs.remotes[n.ID], a.cs.names[n.ID] = r, names
	}
	a.checkConflictsLocked(members)
	// Names of remote endpoints follow (new ones, aliases changed, gone).
	ver := a.cl.StateVersion()
	if changed || ver != a.cs.dnsVer {
		a.cs.dnsVer = ver
		a.refreshRemoteDNS()
	}
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

// memberIndex maps node names to members as this node sees them.
func (a *Agent) memberIndex() map[string]cluster.Member {
	out := map[string]cluster.Member{}
	for _, m := range a.cl.Members() {
		out[m.Name] = m
		if m.State == cluster.MemberAlive && m.Meta.Addr.IsValid() && a.cs.nodeAddrs[m.Name] != m.Meta.Addr {
			a.cs.nodeAddrs[m.Name] = m.Meta.Addr
			a.cs.savedVer = 0 // save the new address with the next snapshot
		}
	}
	return out
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
	settled := a.cs.joined || time.Since(a.cs.started) > settleAfter
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
		} else if !settled {
			node = a.cs.nodeAddrs[ep.Node]
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
	delete(a.cs.remotes, id)
	delete(a.cs.names, id)
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
			out[n.ID], a.cs.names[n.ID] = a.remotesLocked(n, members)
			a.cs.remotes[n.ID] = out[n.ID]
		}
	}
	return out
}

// publishAllLocked declares this node's overlay endpoints to the cluster,
// withdrawing any record of this node the cluster still has for endpoints
// that are gone (removed while the agent was down).
func (a *Agent) publishAllLocked() {
	if a.cl == nil {
		return
	}
	var eps []cluster.Endpoint
	for _, ep := range a.endpoints {
		if rec, ok := a.clusterEndpoint(ep); ok && ep.Phase == phaseReady {
			eps = append(eps, rec)
		}
	}
	if err := a.cl.SyncEndpoints(eps); err != nil {
		a.log.Warn("announce endpoints", "err", err)
	}
}

// clusterEndpoint is the gossiped record of an overlay endpoint.
func (a *Agent) clusterEndpoint(ep *endpointRec) (cluster.Endpoint, bool) {
	n := a.networks[ep.NetworkID]
	if n == nil || n.Driver != api.DriverOverlay {
		return cluster.Endpoint{}, false
	}
	mac, _ := net.ParseMAC(ep.MAC)
	return cluster.Endpoint{
		ID: ep.ID, Network: n.Name, IP: ep.Addr.Addr(), MAC: mac,
		Name: ep.Sandbox, Aliases: ep.Aliases,
	}, true
}

// releaseOverlay gives an endpoint's address back and withdraws its record.
func (a *Agent) releaseOverlay(ep *endpointRec) {
	n := a.networks[ep.NetworkID]
	if a.cl == nil || n == nil || n.Driver != api.DriverOverlay {
		return
	}
	if err := a.cl.Unpublish(ep.ID); err != nil && !errors.Is(err, cluster.ErrNotFound) {
		a.log.Warn("withdraw endpoint record", "endpoint", ep.ID, "err", err)
	}
	if err := a.cl.ReleaseIP(n.Name, ep.Addr.Addr()); err != nil && !errors.Is(err, cluster.ErrNotFound) {
		a.log.Warn("release overlay address", "endpoint", ep.ID, "err", err)
	}
}

// clusterErr maps a cluster error to the API's kinds.
func clusterErr(err error) error {
	switch {
	case errors.Is(err, cluster.ErrInvalid):
		return &userError{ErrInvalid, err.Error()}
	case errors.Is(err, cluster.ErrNotFound):
		return &userError{ErrNotFound, err.Error()}
	case errors.Is(err, cluster.ErrConflict), errors.Is(err, cluster.ErrInUse):
		return &userError{ErrConflict, err.Error()}
	case errors.Is(err, cluster.ErrExhausted):
		return &userError{ErrExhausted, err.Error()}
	}
	return err
}

// createOverlay creates a cluster-scoped network and sets it up here.
func (a *Agent) createOverlay(ctx context.Context, req api.NetworkCreate) (*networkRec, error) {
	if a.cl == nil {
		return nil, invalidf("overlay networks need a cluster: start fabricd with --cluster-bind IP (and --cluster-join on the other nodes)")
	}
	if err := validName("network", req.Name); err != nil {
		return nil, err
	}
	for _, n := range a.networks {
		if n.Name == req.Name {
			return nil, conflictf("network %q already exists (id %s)", req.Name, n.ID[:12])
		}
	}
	if req.IPRange != "" {
		return nil, naming(invalidf("ip_range is not supported by the overlay driver: nodes lease blocks of the subnet (the block_bits option sets their size)"), "ip_range")
	}
	spec := cluster.NetworkSpec{Name: req.Name, Internal: req.Internal, Options: map[string]string{}}
	for k, v := range req.Options {
		switch k {
		case "mtu", "com.docker.network.driver.mtu":
			m, err := strconv.Atoi(v)
			if err != nil || m < 576 || m > 65535 {
				return nil, invalidf("option mtu=%q must be a number from 576 to 65535", v)
			}
			spec.Options["mtu"] = v
		case "block_bits":
			b, err := strconv.Atoi(v)
			if err != nil || b < 1 || b > 30 {
				return nil, invalidf("option block_bits=%q must be a prefix length from 1 to 30 (the size of the blocks nodes lease)", v)
			}
			spec.BlockBits = b
			spec.Options[k] = v
		case "vni":
			vni, err := strconv.ParseUint(v, 10, 32)
			if err != nil || vni == 0 || vni >= 1<<24 {
				return nil, invalidf("option vni=%q must be a number from 1 to 16777215", v)
			}
			spec.VNI = uint32(vni)
			spec.Options[k] = v
		default:
			return nil, invalidf("option %q is not supported by the overlay driver (supported: mtu, block_bits, vni)", k)
		}
	}
	var clusterSubnets []netip.Prefix
	for _, cn := range a.cl.Networks() {
		clusterSubnets = append(clusterSubnets, cn.Subnet)
	}
	planned := &networkRec{Name: req.Name, Driver: api.DriverOverlay}
	if err := a.planSubnet(planned, req, overlayPools, clusterSubnets); err != nil {
		return nil, err
	}
	spec.Subnet, spec.Gateway = planned.Subnet, planned.Gateway
	if _, err := a.overlayMTU(); err != nil {
		return nil, invalidf("%v", err)
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	cn, err := a.cl.CreateNetwork(cctx, spec)
	if err != nil {
		return nil, clusterErr(fmt.Errorf("create overlay network %q: %w", req.Name, err))
	}
	if err := a.materialize(ctx, cn); err != nil {
		_ = a.cl.RemoveNetwork(cn.Name)
		return nil, err
	}
	a.saveClusterLocked(true)
	return a.networks[overlayID(cn.ID)], nil
}

// overlayPools are where overlay subnets come from when none is given:
// 10.0.0.0/8 in /16s from 10.20.0.0, as Docker swarm's 10.0.0.0/8 pool.
var overlayPools = func() []netip.Prefix {
	var out []netip.Prefix
	for i := 20; i < 250; i++ {
		out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16))
	}
	return out
}()

// removeOverlay removes a cluster network everywhere; refused while any
// node has endpoints on it.
func (a *Agent) removeOverlay(ctx context.Context, n *networkRec) error {
	if a.cl == nil {
		return invalidf("network %q is an overlay network but this agent is not in a cluster", n.Name)
	}
	if eps := a.cl.Endpoints(n.Name); len(eps) > 0 {
		var where []string
		for _, ep := range eps {
			where = append(where, ep.Name+"@"+ep.Node)
		}
		sort.Strings(where)
		return conflictf("overlay network %q has %d endpoint(s) in the cluster (%s); disconnect or remove them first", n.Name, len(eps), strings.Join(where, ", "))
	}
	if err := a.cl.RemoveNetwork(n.Name); err != nil && !errors.Is(err, cluster.ErrNotFound) {
		return clusterErr(err)
	}
	a.saveClusterLocked(true)
	a.dropRemotesLocked(n.ID)
	return a.deleteNetwork(ctx, n)
}

// ClusterStatus describes the cluster for `fabricctl status`.
func (a *Agent) clusterStatusLocked() *api.ClusterStatus {
	if a.cl == nil {
		return nil
	}
	st := &api.ClusterStatus{Node: a.cl.Name(), Gossip: a.cl.Addr().String(), Tunnel: a.opts.Tunnel.Local.String()}
	if a.opts.Tunnel.Port != 0 {
		st.Tunnel += ":" + strconv.Itoa(int(a.opts.Tunnel.Port))
	}
	counts := map[string]int{}
	for _, ep := range a.cl.Endpoints("") {
		counts[ep.Node]++
	}
	a.probeMu.Lock()
	probes := a.probes
	a.probeMu.Unlock()
	for _, m := range a.cl.Members() {
		am := api.Member{
			Name: m.Name, Addr: m.Meta.Addr.String(), Gossip: m.Addr.String(), State: m.State.String(),
			Datapath: m.Meta.Datapath, Version: m.Meta.Version, Endpoints: counts[m.Name],
			Since: m.Since.UTC().Format(time.RFC3339), Reachable: m.State == cluster.MemberAlive,
		}
		if p, ok := probes[m.Name]; ok && m.Name != st.Node {
			am.Reachable = p.err == nil
			if p.err != nil {
				am.Probe = "no answer: " + p.err.Error()
				st.Problems = append(st.Problems, fmt.Sprintf("cluster member %s is alive but does not answer this node's probes over the underlay (%v)", m.Name, p.err))
			} else {
				am.Probe = p.rtt.Round(time.Microsecond).String()
			}
		}
		st.Members = append(st.Members, am)
	}
	s := a.cl.Stats()
	st.Alive = a.cl.NumAlive()
	st.Suspect = s.Suspect
	st.Encrypted = a.cl.Encrypted()
	if !s.LastFullSync.IsZero() {
		st.LastFullSync = s.LastFullSync.UTC().Format(time.RFC3339)
	}
	if err := a.cl.JoinError(); err != nil && st.Alive <= 1 {
		st.Problems = append(st.Problems, fmt.Sprintf("not joined to the cluster: %v", err))
	}
	if s.Suspect > 0 {
		st.Problems = append(st.Problems, fmt.Sprintf("%d cluster member(s) suspected of failure", s.Suspect))
	}
	st.MessagesSent, st.MessagesReceived, st.SendErrors = s.MessagesSent, s.MessagesReceived, s.SendErrors
	for _, v := range s.Dropped {
		st.MessagesDropped += v
	}
	st.Networks = len(a.cl.Networks())
	for name, why := range a.unhealthyOverlay {
		st.Problems = append(st.Problems, fmt.Sprintf("overlay network %q not set up here: %s", name, why))
	}
	sort.Strings(st.Problems)
	return st
}

// Keys lists the gossip keys by fingerprint, primary first.
func (a *Agent) Keys() ([]api.Key, error) {
	if a.cl == nil {
		return nil, invalidf("this agent is not in a cluster")
	}
	keys := a.cl.Keys()
	if keys == nil {
		return nil, invalidf("gossip is not encrypted: start every agent with --cluster-secret-file to use keys")
	}
	out := make([]api.Key, 0, len(keys))
	for i, k := range keys {
		out = append(out, api.Key{Fingerprint: keyFingerprint(k), Primary: i == 0})
	}
	return out, nil
}

func keyFingerprint(k []byte) string {
	sum := sha256.Sum256(k)
	return hex.EncodeToString(sum[:8])
}

// KeyOp runs one step of a gossip key rotation on every member: install a
// new key everywhere, use it (it encrypts from then on), remove the old.
func (a *Agent) KeyOp(ctx context.Context, req api.KeyOp) error {
	if a.cl == nil {
		return invalidf("this agent is not in a cluster")
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(req.Key))
	if err != nil {
		return invalidf("key is not base64: %v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	switch req.Op {
	case "install":
		err = a.cl.InstallKey(ctx, key)
	case "use":
		err = a.cl.UseKey(ctx, key)
	case "remove":
		err = a.cl.RemoveKey(ctx, key)
	default:
		return invalidf("key operation %q: want install, use or remove", req.Op)
	}
	if err != nil {
		return clusterErr(fmt.Errorf("key %s: %w", req.Op, err))
	}
	a.log.Info("gossip key "+req.Op, "fingerprint", keyFingerprint(key))
	return nil
}
