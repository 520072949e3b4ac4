package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/ipam"
	"github.com/fabricnet/fabric/cmd/internal/store"
	"github.com/fabricnet/fabric/datapath"
)

// load reads every record into memory.
func (a *Agent) load() error {
	return a.store.View(func(tx *store.Tx) error {
		nets, err := store.List[networkRec](tx, bucketNetworks)
		if err != nil {
			return err
		}
		for i := range nets {
			a.indexNetwork(&nets[i], nil)
		}
		sbs, err := store.List[sandboxRec](tx, bucketSandboxes)
		if err != nil {
			return err
		}
		for i := range sbs {
			a.putSandbox(&sbs[i])
		}
		eps, err := store.List[endpointRec](tx, bucketEndpoints)
		if err != nil {
			return err
		}
		for i := range eps {
			a.indexEndpoint(&eps[i])
		}
		return nil
	})
}

// reconcile brings stored state and the kernel together after a start or a
// crash: unfinished creations are rolled back, unfinished removals are
// completed, and then the datapath is synced to exactly what remains.
func (a *Agent) reconcile(ctx context.Context) error {
	t0 := time.Now()
	// Address pools first: removals below release into them.
	if err := a.rebuildPools(ctx); err != nil {
		return err
	}

	// Sandboxes: finish or roll back, re-create lost namespaces, re-adopt
	// commands.
	for _, sb := range a.sandboxes {
		if sb.Phase != phaseReady {
			a.log.Info("finishing interrupted sandbox operation", "sandbox", sb.Name, "phase", sb.Phase)
			if err := a.removeSandboxLocked(ctx, sb); err != nil {
				return fmt.Errorf("roll back sandbox %s: %w", sb.Name, err)
			}
			continue
		}
		if err := a.reviveSandbox(ctx, sb); err != nil {
			return err
		}
	}
	// Endpoints left half-made or half-removed by a connect/disconnect.
	var unfinished []*endpointRec
	for _, ep := range a.endpoints {
		if ep.Phase != phaseReady {
			unfinished = append(unfinished, ep)
		}
	}
	if err := a.removeEndpoints(ctx, unfinished, false); err != nil {
		return fmt.Errorf("roll back endpoints: %w", err)
	}
	// Networks.
	for _, n := range a.networks {
		if n.Phase != phaseReady {
			if err := a.deleteNetwork(ctx, n); err != nil {
				return fmt.Errorf("roll back network %s: %w", n.Name, err)
			}
		}
	}
	if err := a.dp.Sync(ctx, a.desiredLocked()); err != nil {
		if !onlyParentMissing(err) {
			return fmt.Errorf("sync datapath: %w", err)
		}
		// A missing macvlan/ipvlan parent must not keep the agent down:
		// those networks are reported unhealthy and restored when it
		// returns.
		a.log.Warn("some networks cannot be programmed", "err", err)
		a.markUnhealthyAfterSync(ctx, err)
	}
	// Every sandbox gets its resolver back (Docker loses it on a restart).
	a.refreshDNS()
	for _, sb := range a.sandboxes {
		a.attachDNS(sb)
	}
	a.log.Info("reconciled", "networks", len(a.networks), "sandboxes", len(a.sandboxes),
		"endpoints", len(a.endpoints), "took", time.Since(t0).Round(time.Microsecond))
	return nil
}

// rebuildPools makes the address pools of the stored networks and claims
// the addresses of the stored endpoints in them; an endpoint without its
// network or sandbox is dropped.
func (a *Agent) rebuildPools(ctx context.Context) error {
	for _, n := range a.networks {
		pool, err := ipam.NewPool(n.Subnet, n.Gateway, n.IPRange, n.Exclude)
		if err != nil {
			return fmt.Errorf("network %s: %w", n.Name, err)
		}
		if n.HostShim.IsValid() {
			if err := pool.Claim(n.HostShim, "host shim of network "+n.Name); err != nil {
				return fmt.Errorf("network %s: host shim address: %w", n.Name, err)
			}
		}
		a.indexNetwork(n, pool)
	}
	for id, ep := range a.endpoints {
		pool := a.pools[ep.NetworkID]
		if pool == nil || a.sandboxes[ep.Sandbox] == nil {
			a.log.Warn("dropping orphaned endpoint record", "endpoint", id, "sandbox", ep.Sandbox)
			if err := a.deleteEndpointKernel(ctx, ep, false); err != nil {
				a.log.Warn("remove orphaned endpoint", "err", err)
			}
			a.unindexEndpoint(id)
			if err := a.store.Update(func(tx storeTx) error { return tx.Delete(bucketEndpoints, id) }); err != nil {
				return err
			}
			continue
		}
		if err := pool.Claim(ep.Addr.Addr(), "endpoint "+id[:12]+" (sandbox "+ep.Sandbox+")"); err != nil {
			a.health.warn(fmt.Sprintf("endpoint %s of sandbox %s: %v", id[:12], ep.Sandbox, err))
		}
	}
	return nil
}

// repairDatapath runs the datapath's reconcile pass (Sync) every interval
// to put back what was removed or changed by hand, and soon after a
// datapath that can tell (datapath.DriftWatcher) saw one of its links go,
// at most once per driftPause. It holds the agent's lock for the pass: the
// desired state is the one API calls change under that lock, so a pass
// never undoes, or races, one in flight. Repairs are counted and logged by
// the datapath; an error is logged when it changes.
func (a *Agent) repairDatapath(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var drift <-chan struct{}
	if w, ok := a.dp.(datapath.DriftWatcher); ok {
		var err error
		if drift, err = w.WatchDrift(ctx); err != nil {
			a.log.Warn("no link events: drift is repaired every interval only", "interval", interval, "err", err)
		}
	}
	var last string
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case _, ok := <-drift:
			if !ok {
				drift = nil
				continue
			}
			// Let a burst (a sandbox's veths going) settle into one pass.
			select {
			case <-ctx.Done():
				return
			case <-time.After(driftPause):
			}
		}
		a.mu.Lock()
		err := a.dp.Sync(ctx, a.desiredLocked())
		a.mu.Unlock()
		msg := ""
		if err != nil && ctx.Err() == nil && !onlyParentMissing(err) {
			msg = err.Error()
		}
		if msg != last && msg != "" {
			a.log.Warn("datapath repair pass failed", "err", err)
		}
		last = msg
	}
}

// driftPause is how long a repair pass waits after a link event, and so
// the shortest time between two passes that link events cause.
const driftPause = time.Second

// onlyParentMissing reports whether err (possibly several joined) consists
// of nothing but missing macvlan/ipvlan parents.
func onlyParentMissing(err error) bool {
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range joined.Unwrap() {
			if !onlyParentMissing(e) {
				return false
			}
		}
		return true
	}
	return errors.Is(err, datapath.ErrParentMissing)
}

// reviveSandbox makes a stored, ready sandbox usable again after a restart.
func (a *Agent) reviveSandbox(ctx context.Context, sb *sandboxRec) error {
	switch sb.Mode {
	case api.ModeNetNS, api.ModeNone:
		// After a reboot /var/run/netns is empty: re-create the namespace;
		// Sync then re-creates the endpoints in it.
		if err := a.host.CreateNamespace(sandboxNSName(sb)); err != nil {
			return fmt.Errorf("re-create namespace of sandbox %s: %w", sb.Name, err)
		}
	case api.ModeExternal:
		return a.reviveExternal(ctx, sb)
	}
	if sb.PID > 0 && !sb.Exited {
		if alive(sb.PID, sb.PIDStart) {
			a.procs.watch(sb.Name, sb.PID, sb.PIDStart)
			return nil
		}
		sb.Exited = true
		if err := a.store.Update(func(tx storeTx) error { return tx.Put(bucketSandboxes, sb.Name, sb) }); err != nil {
			return err
		}
		if sb.AutoRemove {
			return a.removeSandboxLocked(ctx, sb)
		}
	}
	return nil
}

// desiredLocked is the complete state the datapath should show.
func (a *Agent) desiredLocked() datapath.State {
	var s datapath.State
	for _, n := range a.networks {
		s.Networks = append(s.Networks, n.datapath())
	}
	for _, ep := range a.endpoints {
		if _, dep, err := a.dpEndpoint(ep); err == nil {
			s.Endpoints = append(s.Endpoints, dep)
		}
	}
	s.Remotes = a.clusterRemotesLocked()
	return s
}
