package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/fabricnet/fabric/cluster"
	"github.com/fabricnet/fabric/cmd/internal/store"
)

// Cluster state in the store: the cluster's own snapshot (records and this
// node's allocations) and the last known underlay address of every node,
// so that a restarted agent keeps forwarding to remote endpoints before
// gossip has caught up.
const (
	bucketCluster = "cluster"
	keySnapshot   = "snapshot"
	keyNodes      = "nodes"
)

// settleAfter is how long after start an agent that has not joined anyone
// still trusts remembered node addresses for members it has not seen.
const settleAfter = 15 * time.Second

// clusterSyncInterval re-derives the overlay state even without events, and
// saves the cluster snapshot when it changed.
const clusterSyncInterval = 2 * time.Second

// overlayID is the local ID of a cluster network: derived from the
// cluster's network ID, so every node names it the same.
func overlayID(id cluster.NetworkID) string {
	sum := sha256.Sum256([]byte("overlay:" + id.String()))
	return hex.EncodeToString(sum[:])
}

// probeInterval is how often every peer is probed over the underlay.
const probeInterval = 5 * time.Second

// probePeers pings every alive peer every probeInterval until ctx ends.
func (a *Agent) probePeers(ctx context.Context) {
	tick := time.NewTicker(probeInterval)
	defer tick.Stop()
	for {
		res := map[string]probe{}
		for _, m := range a.cl.Members() {
			if m.Name == a.cl.Name() || m.State != cluster.MemberAlive {
				continue
			}
			rtt, err := a.cl.Ping(m.Name)
			res[m.Name] = probe{rtt: rtt, err: err}
		}
		a.glue.setProbes(res)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// restoreCluster merges the stored snapshot into the cluster and loads the
// remembered node addresses. It runs before the first reconcile.
func (a *Agent) restoreCluster() error {
	if a.cl == nil {
		return nil
	}
	var snap []byte
	var nodes map[string]netip.Addr
	err := a.store.View(func(tx *store.Tx) error {
		if _, err := tx.Get(bucketCluster, keySnapshot, &snap); err != nil {
			return err
		}
		_, err := tx.Get(bucketCluster, keyNodes, &nodes)
		return err
	})
	if err != nil {
		return fmt.Errorf("read cluster state: %w", err)
	}
	a.glue.restoreNodes(nodes)
	if len(snap) > 0 {
		if err := a.cl.Restore(snap); err != nil {
			// Peers hold the same records: losing the snapshot costs a
			// push/pull, not state.
			a.log.Warn("stored cluster snapshot not usable; relearning from peers", "err", err)
		}
	}
	return nil
}

// saveClusterLocked persists the cluster snapshot if it changed.
func (a *Agent) saveClusterLocked(force bool) {
	if a.cl == nil {
		return
	}
	ver := a.cl.StateVersion()
	nodes, due := a.glue.toSave(ver, force)
	if !due {
		return
	}
	res := a.cl.ReservationVersion()
	snap, err := a.cl.Snapshot()
	if err != nil {
		a.log.Warn("cluster snapshot", "err", err)
		return
	}
	err = a.store.Update(func(tx *store.Tx) error {
		if err := tx.Put(bucketCluster, keySnapshot, snap); err != nil {
			return err
		}
		return tx.Put(bucketCluster, keyNodes, nodes)
	})
	if err != nil {
		a.log.Warn("save cluster snapshot", "err", err)
		return
	}
	a.glue.saved(ver, res)
}

// saveReservationsLocked saves the snapshot if this node was granted or gave
// back a block or a static address since the last save: the sandbox create
// and remove path, which should not pay a store commit for every endpoint
// record (RunCluster saves the rest within its next tick).
func (a *Agent) saveReservationsLocked() {
	if a.cl == nil || a.glue.reservationSaved(a.cl.ReservationVersion()) {
		return
	}
	a.saveClusterLocked(true)
}

// RunCluster follows the cluster until ctx ends: every change of members,
// networks or endpoints is applied to the host (overlay networks made or
// removed, remote endpoints programmed), and the cluster state is saved.
func (a *Agent) RunCluster(ctx context.Context) {
	if a.cl == nil {
		return
	}
	tick := time.NewTicker(clusterSyncInterval)
	defer tick.Stop()
	go a.probePeers(ctx)
	events := a.cl.Events()
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-events:
			a.logEvent(ev)
			// Coalesce a burst (a joining node brings many records).
			drain := time.After(5 * time.Millisecond)
		more:
			for {
				select {
				case ev := <-events:
					a.logEvent(ev)
				case <-drain:
					break more
				}
			}
		case <-tick.C:
		}
		a.mu.Lock()
		a.syncClusterLocked(ctx)
		a.saveClusterLocked(false)
		a.mu.Unlock()
	}
}

func (a *Agent) logEvent(ev cluster.Event) {
	switch ev.Type {
	case cluster.EventMemberJoined, cluster.EventMemberFailed, cluster.EventMemberLeft:
		a.log.Info("cluster member "+strings.TrimPrefix(ev.Type.String(), "member-"), "node", ev.Member.Name, "addr", ev.Member.Meta.Addr)
	case cluster.EventNetworkConflict:
		a.log.Warn("overlay network lost a conflicting create", "network", ev.Network.Name, "why", ev.Conflict.Error())
		a.health.noteEvent("overlay network " + ev.Conflict.Error())
	case cluster.EventLeaseLost:
		if ev.Lease.Bits() == 32 {
			return // a static address: a sandbox here using it is reported by checkConflictsLocked
		}
		a.log.Error("address block taken away from this node; its endpoints there must be recreated", "block", ev.Lease)
		a.health.noteEvent(fmt.Sprintf("address block %s was taken away from this node (it was gone too long or partitioned); recreate its endpoints", ev.Lease))
	}
}
