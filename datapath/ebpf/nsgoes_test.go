package ebpf

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// TestDeleteEndpointLeavesThePairToItsNamespace: an endpoint deleted with
// NamespaceGoes is cut off at once (its host side is down: the sandbox
// reaches nothing) and the others keep working; the kernel deletes the
// pair when the namespace goes, and that is no drift.
func TestDeleteEndpointLeavesThePairToItsNamespace(t *testing.T) {
	l := newUpgradeLab(t)
	c := &overlayHost{t: t, name: l.a.name, path: l.a.path, opts: l.a.opts}
	c.addSandbox(l.net, 4)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := l.a.dp.EnsureEndpoint(ctx, l.net, c.ep); err != nil {
		t.Fatal(err)
	}
	if err := c.ping(l.b.ep.Addr.Addr(), 1); err != nil {
		t.Fatal(err)
	}
	drift, err := l.a.dp.WatchDrift(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nl := netnstest.Handle(t, l.a.path)
	defer nl.Close()
	ep := c.ep
	ep.NamespaceGoes = true
	if err := l.a.dp.DeleteEndpoint(ctx, l.net, ep); err != nil {
		t.Fatalf("DeleteEndpoint: %v", err)
	}
	hl, err := nl.LinkByName(ep.HostIfName)
	if err != nil {
		t.Fatalf("the pair was deleted, not left to its namespace: %v", err)
	}
	if hl.Attrs().Flags&net.FlagUp != 0 {
		t.Error("the host side is still up")
	}
	if err := c.ping(l.b.ep.Addr.Addr(), 1); err == nil {
		t.Error("the deleted endpoint's sandbox still reaches another endpoint")
	}
	if err := l.a.ping(l.b.ep.Addr.Addr(), 1); err != nil {
		t.Fatal(err)
	}

	netnstest.Remove(c.sbName)
	netnstest.Eventually(t, 10*time.Second, "the pair deleted with its namespace", func() bool {
		_, err := nl.LinkByName(ep.HostIfName)
		return plumb.IsNotFound(err)
	})
	select {
	case <-drift:
		t.Fatal("the pair's deletion with its namespace was signalled as drift")
	case <-time.After(2 * time.Second): // bounded: the event comes within milliseconds
	}
}
