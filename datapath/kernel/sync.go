package kernel

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"

	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/plumb"
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
// lists for them (none if absent). A leftover flow-based VXLAN device of
// the eBPF datapath is removed, since it would hold the tunnel port.
func (d *Datapath) Sync(ctx context.Context, s datapath.State) error {
	return d.locked(func() error {
		return d.pass.Run(func() error { return d.sync(ctx, s) })
	})
}

// repaired counts and logs an object a Sync had to put back.
func (d *Datapath) repaired(object, name string) { d.pass.Repaired(d.log, object, name) }

// syncPlan is the shared plan of a Sync plus the nftables state it makes
// and the overlay networks whose VXLAN device is in place.
type syncPlan struct {
	*plumb.Plan
	next    desired
	tunnels map[string]bool
}

// plan checks s: what is invalid is reported and left out.
func (d *Datapath) plan(s datapath.State) (*syncPlan, []error) {
	base, errs := plumb.NewPlan(s)
	p := &syncPlan{Plan: base, next: newDesired(), tunnels: map[string]bool{}}
	for _, n := range s.Networks {
		if n.ID != "" && !plumb.UsesParent(n) {
			p.Keep[plumb.OwnerAlias(n.ID)] = n.Bridge
			if isOverlay(n) {
				p.Keep[vxlanAlias(n.ID)] = vxlanName(n)
			}
		}
	}
	for _, id := range p.IDs {
		if n := p.Nets[id]; !plumb.UsesParent(n) {
			p.next.networks[id] = netStateOf(n)
		}
	}
	// Ports in endpoint ID order, so a conflict always keeps the same winner.
	idx := portIndex{}
	for _, ep := range p.Eps {
		if len(ep.Ports) == 0 {
			continue
		}
		if err := portConflict(p.next.ports, idx, ep); err != nil {
			errs = append(errs, err)
			continue
		}
		p.next.ports[ep.ID] = endpointPorts{NetworkID: ep.NetworkID, Addr: ep.Addr.Addr(), Ports: slices.Clone(ep.Ports)}
		idx.add(ep.ID, ep.Ports)
	}
	return p, errs
}

func (d *Datapath) sync(ctx context.Context, s datapath.State) error {
	p, errs := d.plan(s)
	// Pruning first frees names that objects in s may now want.
	if err := d.host.Prune(p.Keep, p.Parents, func(name string) { d.repaired(datapath.RepairStale, name) }); err != nil {
		errs = append(errs, err)
	}
	if err := d.removeFlowLeftover(); err != nil {
		errs = append(errs, err)
	}
	// Only overlay networks in s are remembered, with their remotes kept
	// until they are set below.
	overlays := map[string]*overlayNet{}
	for id, n := range p.Nets {
		if o := d.overlays[id]; o != nil && isOverlay(n) {
			overlays[id] = o
		}
	}
	d.overlays = overlays
	errs = append(errs, d.host.SyncLANNetworks(ctx, p.Plan)...)
	for _, id := range p.IDs {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, err)...)
		}
		if n := p.Nets[id]; !plumb.UsesParent(n) {
			if err := d.syncNetwork(p, n); err != nil {
				errs = append(errs, err)
			}
		}
	}
	errs = append(errs, d.syncVeths(ctx, p)...)
	errs = append(errs, d.syncSpoof(p)...)
	errs = append(errs, d.syncNeighbours(p)...)
	errs = append(errs, d.host.SyncLANEndpoints(ctx, p.Plan, func(name string) { d.repaired(datapath.RepairChild, name) })...)
	if err := ctx.Err(); err != nil {
		return errors.Join(append(errs, err)...)
	}
	errs = append(errs, d.syncRemotes(ctx, p.Nets, p.tunnels, s.Remotes, &p.next)...)
	old := d.state
	d.state = p.next
	d.portIdx = nil
	if err := d.syncTable(old); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// syncNetwork ensures one bridge or overlay network of a Sync.
func (d *Datapath) syncNetwork(p *syncPlan, n datapath.Network) error {
	if isOverlay(n) {
		if err := d.checkTunnel(n); err != nil {
			p.Failed[n.ID] = true
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

// syncVeths ensures the veth pairs of a Sync's bridge-network endpoints.
// After the first pass, an endpoint whose host veth is intact in one dump
// of the host's links (plumb.VethIntact) is left alone: its sandbox side
// is only checked by Ensure calls and start-up.
func (d *Datapath) syncVeths(ctx context.Context, p *syncPlan) []error {
	var errs []error
	links := map[string]netlink.Link{}
	if d.vethsSynced {
		var err error
		if links, err = d.host.LinksByName(); err != nil {
			errs = append(errs, err)
		}
	}
	failed := false
	for _, ep := range p.BridgeEndpoints() {
		if err := ctx.Err(); err != nil {
			return append(errs, err)
		}
		n := p.Nets[ep.NetworkID]
		if br := links[n.Bridge]; br != nil && plumb.VethIntact(links[ep.HostIfName], n, ep, br.Attrs().Index) {
			continue
		}
		created, _, err := d.ensureVeth(n, ep)
		failed = failed || err != nil
		if err != nil {
			errs = append(errs, err)
		} else if created {
			d.repaired(datapath.RepairVeth, ep.HostIfName)
		}
	}
	d.vethsSynced = !failed
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

// syncRemotes sets every overlay network's remotes from s.Remotes; an
// overlay network without an entry gets none.
func (d *Datapath) syncRemotes(ctx context.Context, nets map[string]datapath.Network, tunnels map[string]bool, remotes map[string][]datapath.Remote, next *desired) []error {
	var errs []error
	for id, rs := range remotes {
		if n, ok := nets[id]; ok && !isOverlay(n) && len(rs) > 0 {
			errs = append(errs, plumb.Invalidf("network %s: remotes need an overlay network, not %q", id, n.Driver))
		}
	}
	ids := slices.Sorted(maps.Keys(tunnels))
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
