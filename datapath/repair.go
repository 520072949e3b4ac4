package datapath

import (
	"context"
	"log/slog"
	"maps"
	"sync"
	"time"
)

// RepairInterval is how often the agent runs a datapath's reconcile pass
// (Sync of the complete desired state) while it runs, so that what was
// removed or changed by hand (a veth, the nftables table, a tc program, an
// overlay forwarding entry) comes back without a restart. flannel re-checks
// its routes as often. A pass compares and rewrites only what differs.
const RepairInterval = 10 * time.Second

// Every calls f every interval, first after one interval, until ctx ends:
// the loop of the repair pass and of other periodic checks.
func Every(ctx context.Context, interval time.Duration, f func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}

// DriftWatcher is implemented by datapaths that learn cheaply that
// something they made went away (a link deleted by hand): the agent then
// runs the repair pass at once rather than at the next RepairInterval.
// The channel is closed when ctx ends.
type DriftWatcher interface {
	WatchDrift(ctx context.Context) (<-chan struct{}, error)
}

// Repair object kinds, the label of fabric_datapath_repairs_total.
const (
	RepairVeth     = "veth"      // an endpoint's veth pair (or its host side) was missing
	RepairBridge   = "bridge"    // a network's bridge was missing
	RepairVXLAN    = "vxlan"     // an overlay network's VXLAN device was missing
	RepairNFTables = "nftables"  // the nftables table was missing or changed
	RepairForward  = "fdb"       // an overlay forwarding entry (FDB, neighbour or remotes map) was missing or wrong
	RepairProgram  = "program"   // a tc/TCX program was not attached where it must be
	RepairStale    = "stale"     // a fabric object no record names was removed
	RepairChild    = "lan-child" // a macvlan/ipvlan child was missing
	RepairNeigh    = "neighbour" // the kernel datapath's host neighbour entry for a local endpoint was missing or wrong
)

// Repairs counts, and logs, what a reconcile pass found out of place and
// put back. It is safe for concurrent use; the zero value is ready.
type Repairs struct {
	mu sync.Mutex
	n  map[string]uint64
}

// Add counts one repair of an object of kind object, named name, and logs
// it once (one line per object repaired).
func (r *Repairs) Add(log *slog.Logger, object, name string) {
	r.mu.Lock()
	if r.n == nil {
		r.n = map[string]uint64{}
	}
	r.n[object]++
	r.mu.Unlock()
	if log != nil {
		log.Warn("repaired datapath drift", "object", object, "name", name)
	}
}

// Counts are the repairs so far, by object kind.
func (r *Repairs) Counts() map[string]uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.n)
}

// Pass is a datapath's bookkeeping of its Sync passes: the repairs they
// made and the last one's error (for Status). Only what a pass puts back
// counts as a repair: Ensure calls make objects, they do not repair them.
// Its methods run under the datapath's lock.
type Pass struct {
	Repairs Repairs
	LastErr error
	running bool
}

// Run runs one pass, sync, and keeps its error.
func (p *Pass) Run(sync func() error) error {
	p.running = true
	defer func() { p.running = false }()
	p.LastErr = sync()
	return p.LastErr
}

// Repaired counts and logs an object put back, if a pass is running.
func (p *Pass) Repaired(log *slog.Logger, object, name string) {
	if p.running {
		p.Repairs.Add(log, object, name)
	}
}
