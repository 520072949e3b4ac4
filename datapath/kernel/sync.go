package kernel

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
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
	err := d.sync(ctx, s)
	d.lastErr = err
	return err
}

func (d *Datapath) sync(ctx context.Context, s datapath.State) error {
	var errs []error
	next := newDesired()
	// keep maps the alias of every object in s to its link name; a link
	// with a fabric alias is kept only under that exact name.
	keep := map[string]string{}
	// parents are the links desired networks hang off: never pruned, even
	// if another (stale) fabric network's alias marks them.
	parents := map[string]bool{}
	nets := map[string]datapath.Network{}
	parentNets := map[string]datapath.Network{}
	if d.fwd != nil {
		// The forwarder's own tunnel device, whatever its alias.
		parents[flowVXLANName] = true
	}
	for _, n := range s.Networks {
		if n.ID != "" && d.fwd == nil {
			// With a forwarder a bridge is a kernel-datapath leftover.
			keep[ownerAlias(n.ID)] = n.Bridge
			if isOverlay(n) {
				keep[vxlanAlias(n.ID)] = vxlanName(n)
			}
		}
		if err := validateNetwork(n); err != nil {
			errs = append(errs, err)
			continue
		}
		nets[n.ID] = n
		if usesParent(n) {
			parentNets[n.ID] = n
			parents[n.Parent] = true
			keep[vlanAlias(n.ID)] = n.Parent
			if n.HostShim.IsValid() {
				keep[shimAlias(n.ID)] = shimName(n.ID)
			}
			continue // no bridge, no rules
		}
		next.networks[n.ID] = netStateOf(n)
	}
	var eps []datapath.Endpoint
	for _, ep := range s.Endpoints {
		if ep.ID != "" {
			keep[ownerAlias(ep.ID)] = ep.HostIfName
		}
		n, ok := nets[ep.NetworkID]
		if !ok {
			errs = append(errs, invalidf("endpoint %s: network %q is not in the state", ep.ID, ep.NetworkID))
			continue
		}
		if err := validateEndpoint(n, ep); err != nil {
			errs = append(errs, err)
			continue
		}
		eps = append(eps, ep)
	}
	// Ports in endpoint ID order, so a conflict always keeps the same winner.
	slices.SortFunc(eps, func(a, b datapath.Endpoint) int { return cmp.Compare(a.ID, b.ID) })
	for _, ep := range eps {
		if len(ep.Ports) == 0 {
			continue
		}
		if err := portConflict(next.ports, ep); err != nil {
			errs = append(errs, err)
			continue
		}
		next.ports[ep.ID] = endpointPorts{NetworkID: ep.NetworkID, Addr: ep.Addr.Addr(), Ports: slices.Clone(ep.Ports)}
	}

	// Pruning first frees names that objects in s may now want.
	if err := d.prune(keep, parents); err != nil {
		errs = append(errs, err)
	}
	if d.fwd == nil {
		if err := d.removeFlowLeftover(); err != nil {
			errs = append(errs, err)
		}
	}
	ids := make([]string, 0, len(nets))
	for id := range nets {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	d.parentNets = parentNets
	// Only overlay networks in s are remembered, with their remotes kept
	// until they are set below.
	overlays := map[string]*overlayNet{}
	for id, n := range nets {
		if o := d.overlays[id]; o != nil && isOverlay(n) && d.fwd == nil {
			overlays[id] = o
		}
	}
	d.overlays = overlays
	// tunnels are the overlay networks whose VXLAN device is in place.
	tunnels := map[string]bool{}
	// failed networks' endpoints are skipped: their errors would only
	// repeat the network's (a missing parent once, not once per endpoint).
	failed := map[string]bool{}
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, err)...)
		}
		if n := nets[id]; usesParent(n) {
			if err := d.ensureParentNetwork(n); err != nil {
				failed[id] = true
				errs = append(errs, err) // names the network already
			}
			continue
		}
		if d.fwd != nil {
			if err := d.fwd.EnsureNetwork(nets[id]); err != nil {
				failed[id] = true
				errs = append(errs, fmt.Errorf("network %s: %w", id, err))
			}
			continue
		}
		n := nets[id]
		if isOverlay(n) {
			if err := d.checkTunnel(n); err != nil {
				failed[id] = true
				errs = append(errs, err)
				continue
			}
		}
		if _, err := d.ensureBridge(n); err != nil {
			errs = append(errs, fmt.Errorf("network %s: %w", id, err))
			continue
		}
		if isOverlay(n) {
			if _, err := d.ensureNetworkVXLAN(n); err != nil {
				errs = append(errs, err)
				continue
			}
			tunnels[id] = true
		}
	}
	shimDsts := map[string]map[netip.Addr]bool{}
	for _, ep := range eps {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, err)...)
		}
		n := nets[ep.NetworkID]
		if !usesParent(n) {
			if failed[n.ID] {
				continue
			}
			if _, err := d.ensureVeth(n, ep); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if failed[n.ID] {
			continue
		}
		if shimDsts[n.ID] == nil {
			shimDsts[n.ID] = map[netip.Addr]bool{}
		}
		shimDsts[n.ID][ep.Addr.Addr()] = true
		if _, err := d.ensureChild(n, ep); err != nil {
			errs = append(errs, err)
		}
	}
	for _, id := range ids {
		if n := nets[id]; usesParent(n) && n.HostShim.IsValid() && !failed[id] {
			if err := d.pruneShimRoutes(n, shimDsts[id]); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if d.fwd == nil {
		errs = append(errs, d.syncRemotes(ctx, nets, tunnels, s.Remotes, &next)...)
	}
	d.state = next
	if d.fwd != nil {
		s.Remotes = d.usableRemotesOf(nets, s.Remotes)
		if err := d.fwd.Sync(s); err != nil {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	}
	if err := d.applyRuleset(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
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
		d.log.Info("pruning fabric link not in state", "link", a.Name, "alias", a.Alias)
		if err := d.nl.LinkDel(l); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("prune link %s: %w", a.Name, err))
		}
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
