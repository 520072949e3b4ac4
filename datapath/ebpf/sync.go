package ebpf

import (
	"context"
	"errors"
	"fmt"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// Sync makes the host match s: fabric links not in s are deleted (a
// kernel-datapath run's bridges and VXLAN devices among them), every
// network and endpoint in s is ensured, and the maps and pins are made to
// hold exactly s. It carries on past a failing object and returns all
// errors together. It is also the repair pass: what it had to put back is
// counted and logged.
func (d *Datapath) Sync(ctx context.Context, s datapath.State) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.host == nil {
		return errClosed
	}
	return d.pass.Run(func() error { return d.sync(ctx, s) })
}

func (d *Datapath) repaired(object, name string) { d.pass.Repaired(d.log, object, name) }

func (d *Datapath) sync(ctx context.Context, s datapath.State) error {
	p, errs := plumb.NewPlan(s)
	// The tunnel device is the programs', whatever its alias.
	p.Parents[tunDevice] = true
	if err := d.host.Prune(p.Keep, p.Parents, func(name string) { d.repaired(datapath.RepairStale, name) }); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, d.host.SyncLANNetworks(ctx, p)...)
	for _, id := range p.IDs {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, err)...)
		}
		if n := p.Nets[id]; !plumb.UsesParent(n) {
			if err := d.fwd.EnsureNetwork(n); err != nil {
				p.Failed[id] = true
				errs = append(errs, fmt.Errorf("network %s: %w", id, err))
			}
		}
	}
	errs = append(errs, d.syncVeths(ctx, p)...)
	errs = append(errs, d.host.SyncLANEndpoints(ctx, p, func(name string) { d.repaired(datapath.RepairChild, name) })...)
	if err := ctx.Err(); err != nil {
		return errors.Join(append(errs, err)...)
	}
	remotes := make(map[string][]datapath.Remote, len(s.Remotes))
	for id, rs := range s.Remotes {
		if n, ok := p.Nets[id]; ok && n.Driver == datapath.DriverOverlay {
			rs = d.usableRemotes(n, rs)
		} else if ok && len(rs) > 0 {
			errs = append(errs, plumb.Invalidf("network %s: remotes need an overlay network, not %q", id, n.Driver))
		}
		remotes[id] = rs
	}
	s.Remotes = remotes
	if err := d.fwd.Sync(s); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// syncVeths ensures the veth pairs of a Sync's bridge and overlay
// endpoints, and their published ports (the first by endpoint ID wins a
// host port two publish).
//
// An endpoint whose host veth is intact in one dump of the host's links
// (plumb.VethIntact) and whose program is attached is not ensured again:
// a pass at 1,000 endpoints costs a dump, not 1,000 ensures.
func (d *Datapath) syncVeths(ctx context.Context, p *plumb.Plan) []error {
	var errs []error
	clear(d.ports)
	links, err := d.host.LinksByName()
	if err != nil {
		errs = append(errs, err)
	}
	for _, ep := range p.Eps {
		n := p.Nets[ep.NetworkID]
		if plumb.UsesParent(n) || p.Failed[n.ID] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return append(errs, err)
		}
		if err := d.portConflict(ep); err != nil {
			errs = append(errs, err)
		} else {
			d.setPorts(ep)
		}
		if l := links[ep.HostIfName]; plumb.VethIntact(l, n, ep, 0) {
			intact, err := d.fwd.endpointIntact(ep.ID, l.Attrs().Index)
			if err != nil {
				errs = append(errs, fmt.Errorf("endpoint %s: %w", ep.ID, err))
			}
			if intact {
				continue
			}
		}
		created, err := d.ensureVeth(n, ep)
		if err != nil {
			errs = append(errs, err)
		} else if created {
			d.repaired(datapath.RepairVeth, ep.HostIfName)
		}
	}
	return errs
}
