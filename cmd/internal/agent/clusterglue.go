package agent

import (
	"maps"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/fabricnet/fabric/cluster"
	"github.com/fabricnet/fabric/cmd/internal/dns"
	"github.com/fabricnet/fabric/datapath"
)

// clusterGlue is the agent's side of the cluster: what the datapath was
// given of each overlay network (its remote endpoints, their DNS names),
// the underlay address of every node (persisted), the bookkeeping of
// snapshot saves, the cluster networks that cannot be set up here, the
// address conflicts lost by endpoints here, and the last probe of every
// peer. It has its own lock, never held across a cluster or datapath call:
// the cluster sync (which holds the agent lock while it programs the
// datapath) writes it in short steps, and status and metrics read it
// without waiting for that sync.
type clusterGlue struct {
	mu        sync.Mutex
	remotes   map[string][]datapath.Remote // network ID → what the datapath has
	names     map[string][]dns.Record      // network ID → DNS names of those remotes
	nodeAddrs map[string]netip.Addr        // node → underlay address, persisted
	savedVer  uint64                       // cluster state version last saved
	savedRes  uint64                       // this node's reservation version last saved
	dnsVer    uint64                       // cluster state version of the DNS table
	joined    bool                         // another member was seen since start
	started   time.Time
	unhealthy map[string]string          // cluster network name → why it is not set up here
	conflicts map[string]addressConflict // endpoint ID → overlay address conflict it lost (conflicts.go)
	probes    map[string]probe           // peer → last health probe
}

func newClusterGlue() *clusterGlue {
	return &clusterGlue{
		remotes: map[string][]datapath.Remote{}, names: map[string][]dns.Record{},
		nodeAddrs: map[string]netip.Addr{}, started: time.Now(),
		unhealthy: map[string]string{}, conflicts: map[string]addressConflict{},
	}
}

// probe is the last health probe of one peer.
type probe struct {
	rtt    time.Duration
	err    error
	missed int // probes in a row without an answer, this one included
}

// probeProblemAfter is how many probes in a row a peer must leave
// unanswered before status calls it a problem: one datagram lost on a
// lossy or slow underlay is not (a probe every probeInterval).
const probeProblemAfter = 3

// unanswered reports whether p is a peer that stopped answering.
func (p probe) unanswered() bool { return p.err != nil && p.missed >= probeProblemAfter }

// remotesOf returns what the datapath has of overlay network id.
func (g *clusterGlue) remotesOf(id string) []datapath.Remote {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.remotes[id]
}

// setRemotes records what the datapath has of overlay network id.
func (g *clusterGlue) setRemotes(id string, r []datapath.Remote, names []dns.Record) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.remotes[id], g.names[id] = r, names
}

// setNames records the DNS names of the remotes of network id (aliases
// may change while the remotes do not).
func (g *clusterGlue) setNames(id string, names []dns.Record) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.names[id] = names
}

// dropNetwork forgets the remotes of a network that is gone here.
func (g *clusterGlue) dropNetwork(id string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.remotes, id)
	delete(g.names, id)
}

// allNames returns the DNS names of every overlay network's remotes.
func (g *clusterGlue) allNames() map[string][]dns.Record {
	g.mu.Lock()
	defer g.mu.Unlock()
	return maps.Clone(g.names)
}

// dnsChanged says whether the DNS table must be refreshed for cluster
// state version ver (or because remotes changed), and notes ver.
func (g *clusterGlue) dnsChanged(ver uint64, changed bool) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !changed && ver == g.dnsVer {
		return false
	}
	g.dnsVer = ver
	return true
}

// noteMembers remembers the address of every alive member, notes that
// another member was seen, and returns the members by name.
func (g *clusterGlue) noteMembers(members []cluster.Member, alive int) map[string]cluster.Member {
	g.mu.Lock()
	defer g.mu.Unlock()
	if alive > 1 {
		g.joined = true
	}
	out := map[string]cluster.Member{}
	for _, m := range members {
		out[m.Name] = m
		if m.State == cluster.MemberAlive && m.Meta.Addr.IsValid() && g.nodeAddrs[m.Name] != m.Meta.Addr {
			g.nodeAddrs[m.Name] = m.Meta.Addr
			g.savedVer = 0 // save the new address with the next snapshot
		}
	}
	return out
}

// rememberedAddr returns where node was last seen, if the agent has not
// yet met the cluster since it started (else the zero address: a node not
// among the members is not forwarded to).
func (g *clusterGlue) rememberedAddr(node string) netip.Addr {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.joined || time.Since(g.started) > settleAfter {
		return netip.Addr{}
	}
	return g.nodeAddrs[node]
}

// restoreNodes sets the remembered node addresses (read from the store).
func (g *clusterGlue) restoreNodes(addrs map[string]netip.Addr) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if addrs != nil {
		g.nodeAddrs = addrs
	}
}

// toSave says whether the snapshot of version ver must be saved, and
// returns a copy of the node addresses to save with it.
func (g *clusterGlue) toSave(ver uint64, force bool) (map[string]netip.Addr, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !force && ver == g.savedVer {
		return nil, false
	}
	return maps.Clone(g.nodeAddrs), true
}

// saved notes the versions of the snapshot just saved.
func (g *clusterGlue) saved(ver, res uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.savedVer, g.savedRes = ver, res
}

// reservationSaved says whether reservation version res was saved.
func (g *clusterGlue) reservationSaved(res uint64) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return res == g.savedRes
}

// setUnhealthy notes why cluster network name is not set up here ("": it
// is) and says whether that changed.
func (g *clusterGlue) setUnhealthy(name, why string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.unhealthy[name] == why {
		return false
	}
	if why == "" {
		delete(g.unhealthy, name)
	} else {
		g.unhealthy[name] = why
	}
	return true
}

// unhealthyNetworks returns the cluster networks not set up here, sorted.
func (g *clusterGlue) unhealthyNetworks() (names, whys []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	names = slices.Sorted(maps.Keys(g.unhealthy))
	for _, n := range names {
		whys = append(whys, g.unhealthy[n])
	}
	return names, whys
}

// setConflicts replaces the lost address conflicts and returns the old.
func (g *clusterGlue) setConflicts(found map[string]addressConflict) map[string]addressConflict {
	g.mu.Lock()
	defer g.mu.Unlock()
	old := g.conflicts
	g.conflicts = found
	return old
}

// conflictWarnings are the status warnings of the current conflicts.
func (g *clusterGlue) conflictWarnings() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]string, 0, len(g.conflicts))
	for _, c := range g.conflicts {
		out = append(out, c.String())
	}
	sort.Strings(out)
	return out
}

// conflictsByNetwork counts the current conflicts of each network.
func (g *clusterGlue) conflictsByNetwork() map[string]int {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := map[string]int{}
	for _, c := range g.conflicts {
		out[c.network]++
	}
	return out
}

// setProbes replaces the last probes, counting each peer's misses in a
// row.
func (g *clusterGlue) setProbes(p map[string]probe) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for peer, np := range p {
		np.missed = 0
		if np.err != nil {
			np.missed = g.probes[peer].missed + 1
		}
		p[peer] = np
	}
	g.probes = p
}

// probe returns the last probe of peer.
func (g *clusterGlue) probe(peer string) (probe, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	p, ok := g.probes[peer]
	return p, ok
}
