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
	addToIndex(a.bySandbox, ep.Sandbox, ep)
	if ep.HostIfName != "" {
		addToIndex(a.byHostIf, ep.HostIfName, ep)
	}
	if ep.Addr.IsValid() {
		addToIndex(a.byAddr, ep.Addr.Addr(), ep)
	}
}

// addToIndex files ep under key in an index of endpoints by key, then ID.
func addToIndex[K comparable](index map[K]map[string]*endpointRec, key K, ep *endpointRec) {
	eps := index[key]
	if eps == nil {
		eps = map[string]*endpointRec{}
		index[key] = eps
	}
	eps[ep.ID] = ep
}

// dropFromIndex removes ep from under key, and key once nothing is under it.
func dropFromIndex[K comparable](index map[K]map[string]*endpointRec, key K, ep *endpointRec) {
	eps := index[key]
	delete(eps, ep.ID)
	if len(eps) == 0 {
		delete(index, key)
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

// dropFromSandbox removes ep from the indexes by sandbox, by host
// interface and by address.
func (a *Agent) dropFromSandbox(ep *endpointRec) {
	dropFromIndex(a.bySandbox, ep.Sandbox, ep)
	dropFromIndex(a.byHostIf, ep.HostIfName, ep)
	if ep.Addr.IsValid() {
		dropFromIndex(a.byAddr, ep.Addr.Addr(), ep)
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
