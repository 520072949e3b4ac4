package agent

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/dns"
	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns"
)

// sandboxEndpoints returns a sandbox's endpoints, oldest first.
func (a *Agent) sandboxEndpoints(name string) []*endpointRec {
	eps := make([]*endpointRec, 0, len(a.bySandbox[name]))
	for _, ep := range a.bySandbox[name] {
		eps = append(eps, ep)
	}
	return sortedEndpoints(eps)
}

// primaryEndpoint is the sandbox's first endpoint on a non-internal
// network: it carries the default route and the published ports.
func (a *Agent) primaryEndpoint(sandbox string) *endpointRec {
	for _, ep := range a.sandboxEndpoints(sandbox) {
		if ep.Phase == phaseRemoving {
			continue
		}
		if n := a.networks[ep.NetworkID]; n != nil && !n.Internal {
			return ep
		}
	}
	return nil
}

// dpEndpoint builds the datapath's view of an endpoint.
func (a *Agent) dpEndpoint(ep *endpointRec) (datapath.Network, datapath.Endpoint, error) {
	n := a.networks[ep.NetworkID]
	sb := a.sandboxes[ep.Sandbox]
	if n == nil || sb == nil {
		return datapath.Network{}, datapath.Endpoint{}, fmt.Errorf("endpoint %s: network or sandbox record missing", ep.ID)
	}
	out := datapath.Endpoint{
		ID: ep.ID, NetworkID: n.ID, NetNSPath: sb.NetNS, IfName: ep.IfName, HostIfName: ep.HostIfName,
		Addr: ep.Addr, MAC: ep.hardwareAddr(), Adopted: ep.Adopted,
	}
	if sb.Mode == api.ModeExternal {
		out.NetNSID = sb.NSID // checked by the datapath on every use
	}
	// An adopted endpoint's sandbox routes are the runtime's (Docker picks
	// the gateway among its networks), but its ports are fabric's.
	if p := a.primaryEndpoint(ep.Sandbox); p == ep && (sb.KeptRoute == "" || ep.Adopted) {
		out.DefaultRoute = !ep.Adopted
		for _, port := range sb.Ports {
			pm := datapath.PortMapping{Proto: port.Proto, HostPort: port.HostPort, Port: port.Port}
			if port.HostIP != "" {
				pm.HostIP = netip.MustParseAddr(port.HostIP)
			}
			out.Ports = append(out.Ports, pm)
		}
	}
	return n.datapath(), out, nil
}

// ensureEndpoint programs one endpoint.
func (a *Agent) ensureEndpoint(ctx context.Context, ep *endpointRec) error {
	n, dep, err := a.dpEndpoint(ep)
	if err != nil {
		return err
	}
	if err := a.dp.EnsureEndpoint(ctx, n, dep); err != nil {
		return fmt.Errorf("set up %s in sandbox %s on network %s: %w", ep.IfName, ep.Sandbox, n.Name, err)
	}
	return nil
}

// deleteEndpointKernel deletes ep from the datapath. namespaceGoes says
// the caller deletes its sandbox's namespace next (datapath.Endpoint's
// NamespaceGoes).
func (a *Agent) deleteEndpointKernel(ctx context.Context, ep *endpointRec, namespaceGoes bool) error {
	n := a.networks[ep.NetworkID]
	if n == nil {
		return nil
	}
	dep := datapath.Endpoint{ID: ep.ID, NetworkID: n.ID, IfName: ep.IfName, HostIfName: ep.HostIfName, Addr: ep.Addr, NamespaceGoes: namespaceGoes}
	if sb := a.sandboxes[ep.Sandbox]; sb != nil {
		dep.NetNSPath = sb.NetNS
		if sb.Mode == api.ModeExternal {
			dep.NetNSID = sb.NSID
			if held, _ := externalState(sb); !held {
				dep.NetNSPath = "" // not ours any more: only the host side goes
			}
		}
	}
	if err := a.dp.DeleteEndpoint(ctx, n.datapath(), dep); err != nil {
		return fmt.Errorf("remove endpoint %s: %w", ep.HostIfName, err)
	}
	return nil
}

// planEndpoint reserves an address (static or dynamic) and builds the record
// of a new endpoint. The caller releases the address if it goes no further.
//
// newSandbox says the sandbox is being created, so it has no endpoints yet:
// the walk over every endpoint for its existing ones is skipped (it was
// most of a create's planning time at 1,000 endpoints).
func (a *Agent) planEndpoint(ctx context.Context, n *networkRec, sandbox string, newSandbox bool, ip string, aliases []string) (*endpointRec, error) {
	ifName := "eth0"
	if !newSandbox {
		for _, o := range a.bySandbox[sandbox] {
			if o.NetworkID == n.ID {
				return nil, conflictf("sandbox %q is already connected to network %q", sandbox, n.Name)
			}
		}
		ifName = a.nextIfName(sandbox)
	}
	if err := validAliases(aliases); err != nil {
		return nil, err
	}
	pool := a.pools[n.ID]
	id := newID()
	owner := "endpoint " + id[:12] + " (sandbox " + sandbox + ")"
	var addr netip.Addr
	if ip != "" {
		var err error
		addr, err = netip.ParseAddr(ip)
		if err != nil || !addr.Is4() {
			return nil, naming(invalidf("ip %q is not an IPv4 address", ip), "ip")
		}
	}
	if n.Driver == api.DriverOverlay {
		// The cluster hands out the address; the local pool only mirrors
		// it, so that local checks (in use, gateway) still hold.
		var err error
		addr, err = a.allocateOverlay(ctx, n, addr, id)
		if err != nil {
			return nil, err
		}
		if err := pool.Claim(addr, owner); err != nil {
			_ = a.cl.ReleaseIP(n.Name, addr)
			return nil, classifyIPAM(err)
		}
	} else if addr.IsValid() {
		if err := pool.Claim(addr, owner); err != nil {
			return nil, classifyIPAM(err)
		}
	} else {
		var err error
		addr, err = pool.Allocate(owner)
		if err != nil {
			return nil, classifyIPAM(err)
		}
	}
	ep := &endpointRec{
		ID: id, NetworkID: n.ID, Sandbox: sandbox, IfName: ifName,
		Addr: netip.PrefixFrom(addr, n.Subnet.Bits()), Aliases: aliases,
		Created: time.Now().UTC(), Phase: phaseCreating, MAC: macFor(addr).String(),
	}
	if n.Driver == api.DriverBridge || n.Driver == api.DriverOverlay {
		ep.HostIfName = "fv" + id[:12] // macvlan/ipvlan children have no host side
	}
	return ep, nil
}

// nextIfName returns the lowest free ethN in the sandbox.
func (a *Agent) nextIfName(sandbox string) string {
	used := map[string]bool{}
	for _, ep := range a.bySandbox[sandbox] {
		used[ep.IfName] = true
	}
	for i := 0; ; i++ {
		if name := fmt.Sprintf("eth%d", i); !used[name] {
			return name
		}
	}
}

// validAliases checks that every alias is one DNS label: an alias with a
// dot (github.com) would claim a name of the outside world.
func validAliases(aliases []string) error {
	for _, al := range aliases {
		if err := dns.ValidLabel(al); err != nil || strings.HasSuffix(al, ".") {
			return invalidf("alias %q is not valid: an alias is one DNS label (1 to 63 letters, digits, '-' or '_', no '.'), so it cannot stand for an outside name", al)
		}
	}
	return nil
}

// Connect attaches a sandbox, or a namespace given by path, to a network.
func (a *Agent) Connect(ctx context.Context, netRef string, req api.Connect) (api.Endpoint, error) {
	ctx, release := a.reserveOverlay(ctx, netRef, req.IP) // the vote, without the lock
	defer release()
	a.mu.Lock()
	defer a.mu.Unlock()
	n, err := a.networkLocked(netRef)
	if err != nil {
		return api.Endpoint{}, err
	}
	if n.Phase != phaseReady {
		return api.Endpoint{}, conflictf("network %q is being created or removed", n.Name)
	}
	sb, isNew, err := a.resolveSandbox(req.Sandbox, true)
	if err != nil {
		return api.Endpoint{}, err
	}
	switch sb.Mode {
	case api.ModeHost:
		return api.Endpoint{}, invalidf("sandbox %q runs in the host's namespace and cannot be connected to networks", sb.Name)
	case api.ModeNone:
		return api.Endpoint{}, naming(invalidf("sandbox %q was started with network none and cannot be connected to networks", sb.Name), "network")
	case api.ModeContainer:
		return api.Endpoint{}, invalidf("sandbox %q shares the namespace of %q; connect %q instead", sb.Name, sb.Container, sb.Container)
	}
	if sb.Phase != phaseReady {
		return api.Endpoint{}, conflictf("sandbox %q is being created or removed", sb.Name)
	}
	if ep := a.adoptedBefore(sb, n, req.Link); ep != nil {
		return a.endpointAPI(ep), nil // a repeated adoption (its caller crashed before it heard back)
	}
	ep, err := a.planEndpoint(ctx, n, sb.Name, false, req.IP, req.Aliases)
	if err != nil {
		if isNew {
			a.releaseExternal(sb)
		}
		return api.Endpoint{}, err
	}
	if sb.Mode == api.ModeExternal {
		// Names the namespace had before fabric came are not fabric's.
		links := sb.foreignLinks
		if !isNew {
			facts, err := inspectNS(sb.NetNS)
			if err != nil {
				a.releaseAddr(ep)
				return api.Endpoint{}, fmt.Errorf("inspect namespace of sandbox %s: %w", sb.Name, err)
			}
			links = facts.links
		}
		ep.IfName = a.freeIfName(sb, links)
	}
	if req.Link != "" {
		if err := a.adoptLink(sb, ep, req.Link); err != nil {
			a.releaseAddr(ep)
			if isNew {
				a.releaseExternal(sb)
			}
			return api.Endpoint{}, err
		}
	}
	oldPrimary := a.primaryEndpoint(sb.Name)
	if err := a.addEndpoints(ctx, sb, isNew, []*endpointRec{ep}); err != nil {
		if isNew {
			a.releaseExternal(sb)
		}
		return api.Endpoint{}, err
	}
	if err := a.repairPrimary(ctx, sb.Name, oldPrimary); err != nil {
		a.log.Warn("move default route", "sandbox", sb.Name, "err", err)
	}
	a.refreshEndpointDNS(ep)
	if isNew {
		a.attachDNS(sb)
	} else {
		a.updateForwarding(sb)
	}
	a.log.Info("connected", "sandbox", sb.Name, "network", n.Name, "ip", ep.Addr, "if", ep.IfName, "kept_default_route", sb.KeptRoute)
	return a.endpointAPI(ep), nil
}

// resolveSandbox finds a sandbox by name, or by namespace path (which may
// name a namespace fabric did not create: then a new external sandbox
// record is returned, not yet stored, with isNew set).
func (a *Agent) resolveSandbox(ref string, allowNew bool) (sb *sandboxRec, isNew bool, err error) {
	if !strings.Contains(ref, "/") {
		sb := a.sandboxes[ref]
		if sb == nil {
			return nil, false, notFoundf("sandbox %q not found (see `fabricctl sandbox ls`; a namespace path must contain '/')", ref)
		}
		return sb, false, nil
	}
	f, id, err := a.openExternal(ref)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	for _, s := range a.sandboxes {
		if s.Mode == api.ModeExternal {
			if s.NSID == id {
				return s, false, nil
			}
			continue
		}
		if s.NetNS == "" {
			continue
		}
		if sid, err := netns.IDOf(s.NetNS); err == nil && sid == id {
			return s, false, nil
		}
	}
	if !allowNew {
		return nil, false, notFoundf("namespace %s is not connected to any network", ref)
	}
	sb = &sandboxRec{
		Name: fmt.Sprintf("ns-%d", id.Ino), Mode: api.ModeExternal, Origin: ref, NSID: id,
		Created: time.Now().UTC(), Phase: phaseReady,
	}
	if a.sandboxes[sb.Name] != nil {
		return nil, false, conflictf("a sandbox named %q already exists", sb.Name)
	}
	if err := a.holdExternal(sb, f); err != nil {
		return nil, false, err
	}
	facts, err := inspectNS(sb.NetNS)
	if err != nil {
		a.releaseExternal(sb)
		return nil, false, fmt.Errorf("inspect namespace %s: %w", ref, err)
	}
	sb.KeptRoute = facts.defaultRoute
	sb.foreignLinks = facts.links
	return sb, true, nil
}

// Disconnect removes a sandbox's endpoint on a network.
func (a *Agent) Disconnect(ctx context.Context, netRef string, req api.Disconnect) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	n, err := a.networkLocked(netRef)
	if err != nil {
		return err
	}
	sb, _, err := a.resolveSandbox(req.Sandbox, false)
	if err != nil {
		return err
	}
	var ep *endpointRec
	for _, e := range a.bySandbox[sb.Name] {
		if e.NetworkID == n.ID {
			ep = e
		}
	}
	if ep == nil {
		return notFoundf("sandbox %q is not connected to network %q", sb.Name, n.Name)
	}
	oldPrimary := a.primaryEndpoint(sb.Name)
	if err := a.removeEndpoints(ctx, []*endpointRec{ep}, false); err != nil {
		return err
	}
	a.refreshEndpointDNS(ep)
	if sb.Mode == api.ModeExternal && len(a.sandboxEndpoints(sb.Name)) == 0 {
		if err := a.store.Update(func(tx storeTx) error { return tx.Delete(bucketSandboxes, sb.Name) }); err != nil {
			return err
		}
		a.detachDNS(sb)
		a.dropSandbox(sb)
		a.releaseExternal(sb)
	} else {
		if err := a.repairPrimary(ctx, sb.Name, oldPrimary); err != nil {
			a.log.Warn("move default route", "sandbox", sb.Name, "err", err)
		}
		a.updateForwarding(sb)
	}
	a.log.Info("disconnected", "sandbox", sb.Name, "network", n.Name)
	return nil
}

// repairPrimary re-ensures the sandbox's primary endpoint when it changed,
// so the default route and published ports follow it.
func (a *Agent) repairPrimary(ctx context.Context, sandbox string, old *endpointRec) error {
	cur := a.primaryEndpoint(sandbox)
	if cur == old || cur == nil {
		return nil
	}
	if old != nil && a.endpoints[old.ID] != nil {
		if err := a.ensureEndpoint(ctx, old); err != nil {
			return err
		}
	}
	return a.ensureEndpoint(ctx, cur)
}

// storeRecords puts eps, and sb if withSandbox, in one store transaction.
func (a *Agent) storeRecords(sb *sandboxRec, withSandbox bool, eps []*endpointRec) error {
	return a.store.Update(func(tx storeTx) error {
		if withSandbox {
			if err := tx.Put(bucketSandboxes, sb.Name, sb); err != nil {
				return err
			}
		}
		for _, ep := range eps {
			if err := tx.Put(bucketEndpoints, ep.ID, ep); err != nil {
				return err
			}
		}
		return nil
	})
}

// addEndpoints stores eps (and sb if new) as creating, programs them and
// marks them ready; on failure everything is rolled back and the
// addresses are released.
func (a *Agent) addEndpoints(ctx context.Context, sb *sandboxRec, sbNew bool, eps []*endpointRec) (err error) {
	release := func() {
		for _, ep := range eps {
			a.releaseAddr(ep)
		}
	}
	if err := a.storeRecords(sb, sbNew, eps); err != nil {
		release()
		return err
	}
	if sbNew {
		a.putSandbox(sb)
	}
	for _, ep := range eps {
		a.indexEndpoint(ep)
	}
	defer func() {
		if err == nil {
			return
		}
		for _, ep := range eps {
			_ = a.deleteEndpointKernel(ctx, ep, false)
			a.unindexEndpoint(ep.ID)
		}
		release()
		_ = a.store.Update(func(tx storeTx) error {
			for _, ep := range eps {
				_ = tx.Delete(bucketEndpoints, ep.ID)
			}
			if sbNew {
				return tx.Delete(bucketSandboxes, sb.Name)
			}
			return nil
		})
		if sbNew {
			a.dropSandbox(sb)
		}
	}()
	for _, ep := range eps {
		if err := a.ensureEndpoint(ctx, ep); err != nil {
			return err
		}
	}
	err = a.store.Update(func(tx storeTx) error {
		for _, ep := range eps {
			ep.Phase = phaseReady
			if err := tx.Put(bucketEndpoints, ep.ID, ep); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		a.publish(eps)
	}
	return err
}

// publish announces overlay endpoints to the cluster.
func (a *Agent) publish(eps []*endpointRec) {
	if a.cl == nil {
		return
	}
	for _, ep := range eps {
		if rec, ok := a.clusterEndpoint(ep); ok {
			if err := a.cl.Publish(rec); err != nil {
				a.log.Warn("announce endpoint", "endpoint", ep.ID, "err", err)
			}
		}
	}
	a.saveReservationsLocked()
}

// releaseAddr gives an endpoint's address back to the local pool and, on
// an overlay network, to the cluster (withdrawing its record).
func (a *Agent) releaseAddr(ep *endpointRec) {
	if p := a.pools[ep.NetworkID]; p != nil {
		p.Release(ep.Addr.Addr())
	}
	a.releaseOverlay(ep)
}

// removeEndpoints marks eps removing, deletes them from the kernel, releases
// their addresses and drops the records. namespaceGoes: as for
// deleteEndpointKernel.
func (a *Agent) removeEndpoints(ctx context.Context, eps []*endpointRec, namespaceGoes bool) error {
	if len(eps) == 0 {
		return nil // no store commits for nothing (every start, none/host sandboxes)
	}
	err := a.store.Update(func(tx storeTx) error {
		for _, ep := range eps {
			ep.Phase = phaseRemoving
			if err := tx.Put(bucketEndpoints, ep.ID, ep); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, ep := range eps {
		if err := a.deleteEndpointKernel(ctx, ep, namespaceGoes); err != nil {
			return err
		}
	}
	err = a.store.Update(func(tx storeTx) error {
		for _, ep := range eps {
			if err := tx.Delete(bucketEndpoints, ep.ID); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, ep := range eps {
		a.releaseAddr(ep)
		a.unindexEndpoint(ep.ID)
	}
	a.saveReservationsLocked()
	return nil
}

// Endpoints lists every endpoint, by sandbox then interface.
func (a *Agent) Endpoints() []api.Endpoint {
	a.mu.Lock()
	defer a.mu.Unlock()
	eps := make([]*endpointRec, 0, len(a.endpoints))
	for _, ep := range a.endpoints {
		eps = append(eps, ep)
	}
	sort.Slice(eps, func(i, j int) bool {
		if eps[i].Sandbox != eps[j].Sandbox {
			return eps[i].Sandbox < eps[j].Sandbox
		}
		return eps[i].IfName < eps[j].IfName
	})
	out := make([]api.Endpoint, 0, len(eps))
	for _, ep := range eps {
		out = append(out, a.endpointAPI(ep))
	}
	return out
}

func (a *Agent) endpointAPI(ep *endpointRec) api.Endpoint {
	n := a.networks[ep.NetworkID]
	if n == nil {
		return ep.api("?", netip.Addr{})
	}
	gw := netip.Addr{}
	var kept string
	if a.primaryEndpoint(ep.Sandbox) == ep {
		gw = n.Gateway
		if sb := a.sandboxes[ep.Sandbox]; sb != nil && sb.KeptRoute != "" {
			gw, kept = netip.Addr{}, "left alone: the namespace's own "+sb.KeptRoute+" (fabric added only the subnet route)"
		}
	}
	if ep.Adopted && gw.IsValid() {
		gw, kept = netip.Addr{}, "left to the container runtime (it was handed the interface)"
	}
	out := ep.api(n.Name, gw)
	out.DefaultRoute = kept
	return out
}
