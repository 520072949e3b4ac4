package agent

import "github.com/fabricnet/fabric/cmd/internal/ipam"

// The core's state is the Agent's own maps: networks, sandboxes, endpoints
// and the networks' address pools (plus the index of published ports). Two
// locks guard them:
//
//   - Agent.mu serialises the changes, and the readers that need one
//     consistent picture (the API's lists, the reconcile and repair
//     passes, the cluster sync). A change holds it from its checks to its
//     last store commit, across datapath calls and the cluster calls that
//     cannot be made before it (a vote that can is made first: see
//     reserveOverlay).
//   - Agent.view guards the maps themselves. A change, holding mu, takes
//     it only for the moment it adds or removes an entry, through the
//     helpers below and putSandbox/dropSandbox. Status and metrics take it
//     for reading instead of mu, so they never wait for a slow change.
//
// The fields status and metrics read of a record (names, IDs, driver,
// subnet, an endpoint's network) do not change once it is in a map; the
// pools have a lock of their own.

// indexNetwork adds network n and its pool to the maps.
func (a *Agent) indexNetwork(n *networkRec, pool *ipam.Pool) {
	a.view.Lock()
	defer a.view.Unlock()
	a.networks[n.ID] = n
	if pool != nil {
		a.pools[n.ID] = pool
	}
}

// unindexNetwork removes network id and its pool from the maps.
func (a *Agent) unindexNetwork(id string) {
	a.view.Lock()
	defer a.view.Unlock()
	delete(a.networks, id)
	delete(a.pools, id)
}

// indexEndpoint adds ep to the maps (replacing a record with its ID).
func (a *Agent) indexEndpoint(ep *endpointRec) {
	a.view.Lock()
	defer a.view.Unlock()
	if old := a.endpoints[ep.ID]; old != nil {
		a.dropFromSandbox(old)
	}
	a.endpoints[ep.ID] = ep
	eps := a.bySandbox[ep.Sandbox]
	if eps == nil {
		eps = map[string]*endpointRec{}
		a.bySandbox[ep.Sandbox] = eps
	}
	eps[ep.ID] = ep
	if ep.HostIfName != "" {
		byIf := a.byHostIf[ep.HostIfName]
		if byIf == nil {
			byIf = map[string]*endpointRec{}
			a.byHostIf[ep.HostIfName] = byIf
		}
		byIf[ep.ID] = ep
	}
}

// unindexEndpoint removes endpoint id from the maps.
func (a *Agent) unindexEndpoint(id string) {
	a.view.Lock()
	defer a.view.Unlock()
	if old := a.endpoints[id]; old != nil {
		a.dropFromSandbox(old)
	}
	delete(a.endpoints, id)
}

// dropFromSandbox removes ep from the indexes by sandbox and by host
// interface.
func (a *Agent) dropFromSandbox(ep *endpointRec) {
	eps := a.bySandbox[ep.Sandbox]
	delete(eps, ep.ID)
	if len(eps) == 0 {
		delete(a.bySandbox, ep.Sandbox)
	}
	byIf := a.byHostIf[ep.HostIfName]
	delete(byIf, ep.ID)
	if len(byIf) == 0 {
		delete(a.byHostIf, ep.HostIfName)
	}
}

// endpointWithHostIf returns an endpoint whose host interface is name,
// nil if none has it.
func (a *Agent) endpointWithHostIf(name string) *endpointRec {
	for _, ep := range a.byHostIf[name] {
		return ep
	}
	return nil
}
