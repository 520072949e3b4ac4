package kernel

import (
	"context"
	"fmt"
	"maps"
	"net"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// TestDeleteEndpointLeavesThePairToItsNamespace: an endpoint deleted with
// NamespaceGoes is cut off at once (its host side is down, the sandbox
// reaches nothing) while the rest of the network keeps working; the kernel
// deletes the pair when the namespace goes, and that is no drift.
func TestDeleteEndpointLeavesThePairToItsNamespace(t *testing.T) {
	l := newLab(t)
	n := l.bridgeNetwork("ng", "br-ng", "10.95.8.0/24", false)
	gone := l.join(n, "g1", "vg1", 2)
	stay := l.join(n, "g2", "vg2", 3)
	mustPing(t, gone.name, "10.95.8.3")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	drift, err := l.dp.WatchDrift(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ep := gone.ep
	ep.NamespaceGoes = true
	if err := l.dp.DeleteEndpoint(ctx, n, ep); err != nil {
		t.Fatalf("DeleteEndpoint: %v", err)
	}
	if l.link("vg1").Attrs().Flags&net.FlagUp != 0 {
		t.Error("the host side is still up")
	}
	mustNotPing(t, gone.name, "10.95.8.3")
	mustNotPing(t, gone.name, "10.95.8.1")
	mustPing(t, stay.name, "10.95.8.1")
	if err := l.dp.DeleteEndpoint(ctx, n, ep); err != nil {
		t.Errorf("DeleteEndpoint again: %v", err)
	}
	// Its anti-spoofing elements go moments later, without a Sync.
	netnstest.Eventually(t, 5*time.Second, "the anti-spoofing elements of the deleted endpoint removed", func() bool {
		return maps.Equal(l.spoofSet(), wantElems(stay.ep))
	})

	netnstest.Remove(gone.name)
	netnstest.Eventually(t, 10*time.Second, "the pair deleted with its namespace", func() bool { return l.linkGone("vg1") })
	select {
	case <-drift:
		t.Fatal("the pair's deletion with its namespace was signalled as drift")
	case <-time.After(2 * time.Second): // bounded: the event comes within milliseconds
	}
	l.expectDriftOnDelete(drift, cancel, "vg2")
}

// TestSyncPrunesAPairItsNamespaceOutlived: when something still holds the
// namespace of an endpoint deleted with NamespaceGoes, its pair stays
// down until the next Sync, which removes it as a link of no endpoint
// (one stale object; the endpoint's anti-spoofing elements, waiting to be
// removed, are no drift). Close removes such elements too.
func TestSyncPrunesAPairItsNamespaceOutlived(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	n := l.bridgeNetwork("nh", "br-nh", "10.95.9.0/24", false)
	held := l.join(n, "h1", "vh1", 2)
	stay := l.join(n, "h2", "vh2", 3)
	ctx := context.Background()
	ep := held.ep
	ep.NamespaceGoes = true
	if err := l.dp.DeleteEndpoint(ctx, n, ep); err != nil {
		t.Fatalf("DeleteEndpoint: %v", err)
	}
	if l.linkGone("vh1") {
		t.Fatal("the pair was deleted, not left to its namespace")
	}
	before := l.dp.pass.Repairs.Counts()[datapath.RepairStale]
	if err := l.dp.Sync(ctx, datapath.State{Networks: []datapath.Network{n}, Endpoints: []datapath.Endpoint{stay.ep}}); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if !l.linkGone("vh1") {
		t.Error("Sync left the pair of a deleted endpoint")
	}
	if got := l.dp.pass.Repairs.Counts()[datapath.RepairStale] - before; got != 1 {
		t.Errorf("Sync counted %d stale objects, want 1 (the pair)", got)
	}
	checkSet(t, l, "after Sync", wantElems(stay.ep))
	mustPing(t, stay.name, "10.95.9.1")

	last := l.join(n, "h3", "vh3", 4)
	ep = last.ep
	ep.NamespaceGoes = true
	if err := l.dp.DeleteEndpoint(ctx, n, ep); err != nil {
		t.Fatalf("DeleteEndpoint: %v", err)
	}
	if err := l.dp.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	checkSet(t, l, "after Close", wantElems(stay.ep))
}

// TestRetiredElementsGoDuringALongBurst: endpoints deleted with their
// namespace one after the other, closer than spoofRetireQuiet, for longer
// than spoofRetireMaxWait: the first ones' elements are removed while the
// burst goes on, not only after it.
func TestRetiredElementsGoDuringALongBurst(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	n := l.bridgeNetwork("nb", "br-nb", "10.95.10.0/24", false)
	const count = 100
	step := spoofRetireQuiet / 4
	if count*step < 2*spoofRetireMaxWait {
		t.Fatalf("a burst of %d × %v is not longer than 2 × %v", count, step, spoofRetireMaxWait)
	}
	var eps []datapath.Endpoint
	for i := range count {
		ep := l.join(n, fmt.Sprintf("b%d", i), fmt.Sprintf("vb%d", i), byte(2+i)).ep
		ep.NamespaceGoes = true
		eps = append(eps, ep)
	}
	start := time.Now()
	for i, ep := range eps {
		if err := l.dp.DeleteEndpoint(context.Background(), n, ep); err != nil {
			t.Fatalf("DeleteEndpoint: %v", err)
		}
		if _, ok := l.spoofSet()[eps[0].HostIfName]; !ok {
			t.Logf("the first element went after %v, at deletion %d of %d", time.Since(start).Round(time.Millisecond), i+1, count)
			return
		}
		time.Sleep(step) // the burst's pace is what is tested
	}
	t.Fatalf("the first element stayed through a burst of %v", time.Since(start).Round(time.Millisecond))
}
