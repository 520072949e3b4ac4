package kernel

import (
	"context"
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
// down until the next Sync, which removes it as a link of no endpoint.
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
	if err := l.dp.Sync(ctx, datapath.State{Networks: []datapath.Network{n}, Endpoints: []datapath.Endpoint{stay.ep}}); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if !l.linkGone("vh1") {
		t.Error("Sync left the pair of a deleted endpoint")
	}
	mustPing(t, stay.name, "10.95.9.1")
}
