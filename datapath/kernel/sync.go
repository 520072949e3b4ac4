package kernel

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"

	"github.com/fabricnet/fabric/datapath"
)

// Sync makes the host match s: fabric links not in s are deleted, every
// network and endpoint in s is ensured, and the nftables table is
// regenerated from s. It carries on past a failing object and returns all
// errors together, so one bad endpoint does not hold up the rest.
//
// A macvlan/ipvlan network whose parent is missing or down is skipped with
// its endpoints; the returned error then wraps datapath.ErrParentMissing
// (once per network), Status reports it, and a later Sync or
// EnsureNetwork+EnsureEndpoint restores the endpoints when it is back.
//
// Overlay networks get their VXLAN device and exactly the remotes s.Remotes
// lists for them (none if absent). In the bridge model a leftover
// flow-based VXLAN device of the eBPF datapath is removed, since it would
// hold the tunnel port; with a forwarder it is kept.
func (d *Datapath) Sync(ctx context.Context, s datapath.State) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.nl == nil {
		return errClosed
	}
	d.syncing = true
	defer func() { d.syncing = false }()
	err := d.sync(ctx, s)
	d.lastErr = err
	return err
}

// repaired counts and logs an object a Sync had to put back.
func (d *Datapath) repaired(object, name string) {
	if d.syncing {
		d.repairs.Add(d.log, object, name)
	}
}

// syncPlan is a State checked and indexed for one Sync.
type syncPlan struct {
	next desired
	// keep maps the alias of every object in s to its link name; a link
	// with a fabric alias is kept only under that exact name.
	keep map[string]string
	// parents are the links desired networks hang off: never pruned, even
	// if another (stale) fabric network's alias marks them.
	parents    map[string]bool
	nets       map[string]datapath.Network
	parentNets map[string]datapath.Network
	ids        []string            // of nets, sorted
	eps        []datapath.Endpoint // valid ones, by ID
	// tunnels are the overlay networks whose VXLAN device is in place;
	// failed networks' endpoints are skipped: their errors would only
	// repeat the network's (a missing parent once, not once per endpoint).
	tunnels, failed map[string]bool
}

// plan checks s: what is invalid is reported and left out.
func (d *Datapath) plan(s datapath.State) (*syncPlan, []error) {
	var errs []error
	p := &syncPlan{
		next: newDesired(), keep: map[string]string{}, parents: map[string]bool{},
		nets: map[string]datapath.Network{}, parentNets: map[string]datapath.Network{},
		tunnels: map[string]bool{}, failed: map[string]bool{},
	}
	if d.fwd != nil {
		// The forwarder's own tunnel device, whatever its alias.
		p.parents[flowVXLANName] = true
	}
	for _, n := range s.Networks {
		if n.ID != "" && d.fwd == nil {
			// With a forwarder a bridge is a kernel-datapath leftover.
			p.keep[ownerAlias(n.ID)] = n.Bridge
			if isOverlay(n) {
				p.keep[vxlanAlias(n.ID)] = vxlanName(n)
			}
		}
		if err := validateNetwork(n); err != nil {
			errs = append(errs, err)
			continue
		}
		p.nets[n.ID] = n
		p.ids = append(p.ids, n.ID)
		if usesParent(n) {
			p.parentNets[n.ID] = n
			p.parents[n.Parent] = true
			p.keep[vlanAlias(n.ID)] = n.Parent
			if n.HostShim.IsValid() {
				p.keep[shimAlias(n.ID)] = shimName(n.ID)
			}
			continue // no bridge, no rules
		}
		p.next.networks[n.ID] = netStateOf(n)
	}
	slices.Sort(p.ids)
	for _, ep := range s.Endpoints {
		if ep.ID != "" {
			p.keep[ownerAlias(ep.ID)] = ep.HostIfName
		}
		n, ok := p.nets[ep.NetworkID]
		if !ok {
			errs = append(errs, invalidf("endpoint %s: network %q is not in the state", ep.ID, ep.NetworkID))
			continue
		}
		if err := validateEndpoint(n, ep); err != nil {
			errs = append(errs, err)
			continue
		}
		p.eps = append(p.eps, ep)
	}
	// Ports in endpoint ID order, so a conflict always keeps the same winner.
	slices.SortFunc(p.eps, func(a, b datapath.Endpoint) int { return cmp.Compare(a.ID, b.ID) })
	for _, ep := range p.eps {
		if len(ep.Ports) == 0 {
			continue
		}
		if err := portConflict(p.next.ports, ep); err != nil {
			errs = append(errs, err)
			continue
		}
		p.next.ports[ep.ID] = endpointPorts{NetworkID: ep.NetworkID, Addr: ep.Addr.Addr(), Ports: slices.Clone(ep.Ports)}
	}
	return p, errs
}

func (d *Datapath) sync(ctx context.Context, s datapath.State) error {
	p, errs := d.plan(s)
	// Pruning first frees names that objects in s may now want.
	if err := d.prune(p.keep, p.parents); err != nil {
		errs = append(errs, err)
	}
	if d.fwd == nil {
		if err := d.removeFlowLeftover(); err != nil {
			errs = append(errs, err)
		}
	}
	d.parentNets = p.parentNets
	// Only overlay networks in s are remembered, with their remotes kept
	// until they are set below.
	overlays := map[string]*overlayNet{}
	for id, n := range p.nets {
		if o := d.overlays[id]; o != nil && isOverlay(n) && d.fwd == nil {
			overlays[id] = o
		}
	}
	d.overlays = overlays
	for _, id := range p.ids {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, err)...)
		}
		if err := d.syncNetwork(p, p.nets[id]); err != nil {
			errs = append(errs, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return errors.Join(append(errs, err)...)
	}
	errs = append(errs, d.syncEndpoints(ctx, p)...)
	if d.fwd == nil {
		errs = append(errs, d.syncRemotes(ctx, p.nets, p.tunnels, s.Remotes, &p.next)...)
	}
	old := d.state
	d.state = p.next
	if d.fwd != nil {
		s.Remotes = d.usableRemotesOf(p.nets, s.Remotes)
		if err := d.fwd.Sync(s); err != nil {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	}
	if err := d.syncTable(old); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// syncNetwork ensures one network of a Sync; a failure marks it failed
// when its endpoints cannot be set up either.
func (d *Datapath) syncNetwork(p *syncPlan, n datapath.Network) error {
	if usesParent(n) {
		if err := d.ensureParentNetwork(n); err != nil {
			p.failed[n.ID] = true
			return err // names the network already
		}
		return nil
	}
	if d.fwd != nil {
		if err := d.fwd.EnsureNetwork(n); err != nil {
			p.failed[n.ID] = true
			return fmt.Errorf("network %s: %w", n.ID, err)
		}
		return nil
	}
	if isOverlay(n) {
		if err := d.checkTunnel(n); err != nil {
			p.failed[n.ID] = true
			return err
		}
	}
	created, err := d.ensureBridge(n)
	if err != nil {
		return fmt.Errorf("network %s: %w", n.ID, err)
	}
	if created {
		d.repaired(datapath.RepairBridge, n.Bridge)
	}
	if !isOverlay(n) {
		return nil
	}
	created, err = d.ensureNetworkVXLAN(n)
	if err != nil {
		return err
	}
	if created {
		d.repaired(datapath.RepairVXLAN, vxlanName(n))
	}
	p.tunnels[n.ID] = true
	return nil
}

// syncEndpoints ensures the endpoints of a Sync whose networks are in
// place, and the host shims' routes to exactly them.
func (d *Datapath) syncEndpoints(ctx context.Context, p *syncPlan) []error {
	var errs []error
	shimDsts := map[string]map[netip.Addr]bool{}
	for _, ep := range p.eps {
		if err := ctx.Err(); err != nil {
			return append(errs, err)
		}
		n := p.nets[ep.NetworkID]
		if p.failed[n.ID] {
			continue
		}
		if !usesParent(n) {
			created, err := d.ensureVeth(n, ep)
			if err != nil {
				errs = append(errs, err)
			} else if created {
				d.repaired(datapath.RepairVeth, ep.HostIfName)
			}
			continue
		}
		if shimDsts[n.ID] == nil {
			shimDsts[n.ID] = map[netip.Addr]bool{}
		}
		shimDsts[n.ID][ep.Addr.Addr()] = true
		created, err := d.ensureChild(n, ep)
		if err != nil {
			errs = append(errs, err)
		} else if created {
			d.repaired(datapath.RepairChild, ep.NetNSPath+":"+ep.IfName)
		}
	}
	for _, id := range p.ids {
		if n := p.nets[id]; usesParent(n) && n.HostShim.IsValid() && !p.failed[id] {
			if err := d.pruneShimRoutes(n, shimDsts[id]); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errs
}

// syncTable brings the nftables table to d.state. When that is what the
// table was built from (old) it is only compared, and rewritten (a repair)
// if it was removed or changed.
func (d *Datapath) syncTable(old desired) error {
	// The first Sync after New rewrites it: settings that are not in the
	// adopted table's comments (the guarded ports) may have changed.
	if d.tableSynced && !d.dirty && reflect.DeepEqual(old, d.state) {
		intact, err := d.tableMatches(d.ruleset())
		if err != nil {
			d.log.Warn("cannot read nftables table; rebuilding it", "err", err)
		}
		if intact {
			return nil
		}
		d.repaired(datapath.RepairNFTables, tableName)
	}
	if err := d.applyRuleset(); err != nil {
		return err
	}
	d.tableSynced = true
	return nil
}

// prune deletes every link carrying a fabric alias that keep does not list
// under the link's name, except the parents of desired networks. Links
// without a fabric alias are never touched. (macvlan/ipvlan children live
// in the sandboxes and go with them or with DeleteEndpoint.)
func (d *Datapath) prune(keep map[string]string, parents map[string]bool) error {
	links, err := retryDump(d.nl.LinkList)
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	var errs []error
	for _, l := range links {
		a := l.Attrs()
		if !strings.HasPrefix(a.Alias, datapath.OwnerPrefix) {
			continue
		}
		if name, ok := keep[a.Alias]; (ok && name == a.Name) || parents[a.Name] {
			continue
		}
		if err := d.nl.LinkDel(l); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("prune link %s: %w", a.Name, err))
			continue
		}
		d.repaired(datapath.RepairStale, a.Name+" ("+a.Alias+")")
	}
	return errors.Join(errs...)
}

// syncRemotes sets every overlay network's remotes from s.Remotes; an
// overlay network without an entry gets none.
func (d *Datapath) syncRemotes(ctx context.Context, nets map[string]datapath.Network, tunnels map[string]bool, remotes map[string][]datapath.Remote, next *desired) []error {
	var errs []error
	for id, rs := range remotes {
		if n, ok := nets[id]; ok && !isOverlay(n) && len(rs) > 0 {
			errs = append(errs, invalidf("network %s: remotes need an overlay network, not %q", id, n.Driver))
		}
	}
	ids := make([]string, 0, len(tunnels))
	for id := range tunnels {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return append(errs, err)
		}
		n := nets[id]
		rs := d.usableRemotes(n, remotes[id])
		if err := d.setRemotes(n, rs); err != nil {
			errs = append(errs, err)
			continue
		}
		next.peers[id] = peersOf(n, rs)
	}
	return errs
}

// usableRemotesOf is usableRemotes for every overlay network of s.
func (d *Datapath) usableRemotesOf(nets map[string]datapath.Network, remotes map[string][]datapath.Remote) map[string][]datapath.Remote {
	out := make(map[string][]datapath.Remote, len(remotes))
	for id, rs := range remotes {
		if n, ok := nets[id]; ok && isOverlay(n) {
			rs = d.usableRemotes(n, rs)
		}
		out[id] = rs
	}
	return out
}
