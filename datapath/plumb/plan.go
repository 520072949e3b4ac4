package plumb

import (
	"cmp"
	"context"
	"net/netip"
	"slices"

	"github.com/fabricnet/fabric/datapath"
)

// Plan is a datapath.State checked and indexed for one Sync, the part
// both datapaths read the same way.
type Plan struct {
	// Keep maps the alias of every link the state names to the link's
	// name; a link with a fabric alias is kept only under that exact name.
	Keep map[string]string
	// Parents are links never pruned whatever their alias: the parents of
	// desired networks, and devices a datapath adds.
	Parents map[string]bool
	Nets    map[string]datapath.Network // valid networks, by ID
	LANNets map[string]datapath.Network // the macvlan/ipvlan ones
	IDs     []string                    // of Nets, sorted
	Eps     []datapath.Endpoint         // valid endpoints of Nets, by ID
	// Failed are networks that could not be ensured: their endpoints are
	// skipped (their errors would only repeat the network's).
	Failed map[string]bool
}

// NewPlan checks s; what is invalid is reported and left out.
func NewPlan(s datapath.State) (*Plan, []error) {
	var errs []error
	p := &Plan{
		Keep: map[string]string{}, Parents: map[string]bool{},
		Nets: map[string]datapath.Network{}, LANNets: map[string]datapath.Network{},
		Failed: map[string]bool{},
	}
	for _, n := range s.Networks {
		if err := ValidateNetwork(n); err != nil {
			errs = append(errs, err)
			continue
		}
		p.Nets[n.ID] = n
		p.IDs = append(p.IDs, n.ID)
		if UsesParent(n) {
			p.LANNets[n.ID] = n
			p.Parents[n.Parent] = true
			p.Keep[VLANAlias(n.ID)] = n.Parent
			if n.HostShim.IsValid() {
				p.Keep[ShimAlias(n.ID)] = ShimName(n.ID)
			}
		}
	}
	slices.Sort(p.IDs)
	for _, ep := range s.Endpoints {
		if ep.ID != "" {
			p.Keep[OwnerAlias(ep.ID)] = ep.HostIfName
		}
		n, ok := p.Nets[ep.NetworkID]
		if !ok {
			errs = append(errs, Invalidf("endpoint %s: network %q is not in the state", ep.ID, ep.NetworkID))
			continue
		}
		if err := ValidateEndpoint(n, ep); err != nil {
			errs = append(errs, err)
			continue
		}
		p.Eps = append(p.Eps, ep)
	}
	slices.SortFunc(p.Eps, func(a, b datapath.Endpoint) int { return cmp.Compare(a.ID, b.ID) })
	return p, errs
}

// SyncLANNetworks ensures the plan's macvlan/ipvlan networks, marking
// those that fail (a missing parent: an error wrapping
// datapath.ErrParentMissing, once per network).
func (h *Host) SyncLANNetworks(ctx context.Context, p *Plan) []error {
	h.SetLANNetworks(p.LANNets)
	var errs []error
	for _, id := range p.IDs {
		n, ok := p.LANNets[id]
		if !ok {
			continue
		}
		if err := ctx.Err(); err != nil {
			return append(errs, err)
		}
		if err := h.EnsureLANNetwork(n); err != nil {
			p.Failed[id] = true
			errs = append(errs, err) // names the network already
		}
	}
	if err := h.ensureShimGuard(); err != nil {
		errs = append(errs, err)
	}
	return errs
}

// BridgeEndpoints are the plan's endpoints (in ID order) on networks
// without a parent that are in place (not Failed).
func (p *Plan) BridgeEndpoints() []datapath.Endpoint { return p.readyEndpoints(false) }

// LANEndpoints are the plan's endpoints (in ID order) on macvlan/ipvlan
// networks that are in place (not Failed).
func (p *Plan) LANEndpoints() []datapath.Endpoint { return p.readyEndpoints(true) }

func (p *Plan) readyEndpoints(lan bool) []datapath.Endpoint {
	var out []datapath.Endpoint
	for _, ep := range p.Eps {
		if n := p.Nets[ep.NetworkID]; UsesParent(n) == lan && !p.Failed[n.ID] {
			out = append(out, ep)
		}
	}
	return out
}

// SyncLANEndpoints ensures the plan's macvlan/ipvlan endpoints whose
// networks are in place, and the host shims' routes to exactly them;
// repaired is told each child that had to be made.
func (h *Host) SyncLANEndpoints(ctx context.Context, p *Plan, repaired func(name string)) []error {
	var errs []error
	shimDsts := map[string]map[netip.Addr]bool{}
	for _, ep := range p.LANEndpoints() {
		if err := ctx.Err(); err != nil {
			return append(errs, err)
		}
		n := p.Nets[ep.NetworkID]
		if shimDsts[n.ID] == nil {
			shimDsts[n.ID] = map[netip.Addr]bool{}
		}
		shimDsts[n.ID][ep.Addr.Addr()] = true
		created, err := h.EnsureChild(n, ep)
		if err != nil {
			errs = append(errs, err)
		} else if created {
			repaired(ep.NetNSPath + ":" + ep.IfName)
		}
	}
	for _, id := range p.IDs {
		if n, ok := p.LANNets[id]; ok && n.HostShim.IsValid() && !p.Failed[id] {
			if err := h.PruneShimRoutes(n, shimDsts[id]); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errs
}
