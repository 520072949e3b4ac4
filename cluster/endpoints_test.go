package cluster

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

func endpointOn(t testing.TB, c *Cluster, id string) (Endpoint, bool) {
	t.Helper()
	ep, err := c.Endpoint(id)
	if err != nil && !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	return ep, err == nil
}

func TestEndpointRecords(t *testing.T) {
	members := startCluster(t, 3, func(c *Config) { c.ReapEndpointsAfter = time.Second })
	createNetwork(t, members, "ep", "10.70.0.0/16")
	events := watchEvents(t, members[0])
	owner := members[1]

	ep := Endpoint{ID: "c1", Network: "ep", IP: netip.MustParseAddr("10.70.1.5"),
		MAC: net.HardwareAddr{2, 0, 0, 0, 0, 5}, Name: "web", Aliases: []string{"www"}}
	if err := owner.Publish(ep); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 5*time.Second, "endpoint replicated", func() bool {
		got, ok := endpointOn(t, members[2], "c1")
		return ok && got.Node == "node-1" && got.IP == ep.IP && got.Name == "web" && slices.Equal(got.Aliases, []string{"www"}) && got.MAC.String() == ep.MAC.String()
	})

	// Publishing the same record again is a no-op; a changed one wins.
	v := owner.Stats().StateVersion
	if err := owner.Publish(ep); err != nil {
		t.Fatal(err)
	}
	if owner.Stats().StateVersion != v {
		t.Error("re-publishing an unchanged endpoint changed the state")
	}
	ep.Aliases = []string{"www", "api"}
	if err := owner.Publish(ep); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 5*time.Second, "update replicated", func() bool {
		got, ok := endpointOn(t, members[0], "c1")
		return ok && len(got.Aliases) == 2
	})
	netnstest.Eventually(t, 5*time.Second, "added and updated events", func() bool {
		_, added := events.find(func(e Event) bool { return e.Type == EventEndpointAdded && e.Endpoint.ID == "c1" })
		_, updated := events.find(func(e Event) bool { return e.Type == EventEndpointUpdated && len(e.Endpoint.Aliases) == 2 })
		return added && updated
	})

	checkBadEndpointsRefused(t, members, owner)

	// Withdrawn by the owner.
	if err := owner.Unpublish("c1"); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 5*time.Second, "withdrawal replicated", func() bool {
		_, ok := endpointOn(t, members[2], "c1")
		return !ok
	})

	// Reaped when the owner dies, after ReapEndpointsAfter.
	if err := owner.Publish(Endpoint{ID: "c2", Network: "ep", IP: netip.MustParseAddr("10.70.1.7")}); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 5*time.Second, "c2 replicated", func() bool { _, ok := endpointOn(t, members[0], "c2"); return ok })
	_ = owner.shutdown(false)
	start := time.Now()
	netnstest.Eventually(t, 15*time.Second, "c2 reaped", func() bool {
		_, ok0 := endpointOn(t, members[0], "c2")
		_, ok2 := endpointOn(t, members[2], "c2")
		return !ok0 && !ok2
	})
	t.Logf("reaped %s after the crash", time.Since(start).Round(time.Millisecond))
	if _, ok := events.find(func(e Event) bool { return e.Type == EventMemberFailed && e.Member.Name == "node-1" }); !ok {
		t.Error("no member-failed event")
	}
	if _, ok := events.find(func(e Event) bool { return e.Type == EventEndpointRemoved && e.Endpoint.ID == "c2" }); !ok {
		t.Error("no endpoint-removed event")
	}
}

// checkBadEndpointsRefused: malformed records, another node's endpoint ID
// (c1 is owner's) and removing network "ep" while it has endpoints are
// refused locally.
func checkBadEndpointsRefused(t *testing.T, members []*Cluster, owner *Cluster) {
	t.Helper()
	for _, bad := range []Endpoint{
		{ID: "x", Network: "nope", IP: netip.MustParseAddr("10.70.0.9")},
		{ID: "x", Network: "ep", IP: netip.MustParseAddr("10.99.0.9")},
		{ID: "", Network: "ep", IP: netip.MustParseAddr("10.70.0.9")},
		{ID: "x", Network: "ep", IP: netip.MustParseAddr("10.70.0.9"), Aliases: make([]string, 40)},
	} {
		if err := owner.Publish(bad); err == nil {
			t.Errorf("Publish(%+v) accepted", bad)
		}
	}
	if err := members[2].Publish(Endpoint{ID: "c1", Network: "ep", IP: netip.MustParseAddr("10.70.1.6")}); !errors.Is(err, ErrConflict) {
		t.Errorf("publishing another node's endpoint ID: %v", err)
	}
	if err := members[0].RemoveNetwork("ep"); !errors.Is(err, ErrInUse) {
		t.Errorf("removing a network with endpoints: %v", err)
	}
}

// An agent that restarts declares its endpoints with SyncEndpoints; the
// records it no longer has are withdrawn even though the others remember
// them.
func TestSyncEndpointsAfterRestart(t *testing.T) {
	members := startCluster(t, 2)
	createNetwork(t, members, "sy", "10.71.0.0/16")
	for _, id := range []string{"keep", "stale"} {
		ip := netip.MustParseAddr("10.71.0.10")
		if id == "stale" {
			ip = ip.Next()
		}
		if err := members[1].Publish(Endpoint{ID: id, Network: "sy", IP: ip}); err != nil {
			t.Fatal(err)
		}
	}
	netnstest.Eventually(t, 5*time.Second, "records replicated", func() bool { return len(members[0].Endpoints("sy")) == 2 })
	if err := members[1].Close(); err != nil {
		t.Fatal(err)
	}

	back := startMember(t, testConfig("node-1"))
	if _, err := back.Join(t.Context(), members[0].Addr().String()); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 5*time.Second, "records learned back", func() bool { return len(back.Endpoints("sy")) == 2 })
	if err := back.SyncEndpoints([]Endpoint{{ID: "keep", Network: "sy", IP: netip.MustParseAddr("10.71.0.10")}}); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 5*time.Second, "stale record withdrawn everywhere", func() bool {
		for _, c := range []*Cluster{members[0], back} {
			eps := c.Endpoints("sy")
			if len(eps) != 1 || eps[0].ID != "keep" {
				return false
			}
		}
		return true
	})
}
