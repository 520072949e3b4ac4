package agent

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cluster"
	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/ipam"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// TestSpecialUseSubnetsRefusedForEveryDriver: no driver takes a subnet in
// 0/8, 127/8, 169.254/16, 224/4 or 240/4, and nothing is created.
func TestSpecialUseSubnetsRefusedForEveryDriver(t *testing.T) {
	a := newTestAgent(t, t.TempDir(), newFake())
	defer a.Close()
	before := len(a.Networks())
	for _, subnet := range []string{"0.0.0.0/8", "127.0.0.0/16", "169.254.0.0/16", "224.0.0.0/8", "239.1.0.0/24", "240.0.0.0/8", "255.255.255.0/24"} {
		if _, err := a.CreateNetwork(context.Background(), api.NetworkCreate{Name: "su", Subnet: subnet}); !errors.Is(err, ErrInvalid) {
			t.Errorf("bridge on %s: %v, want invalid", subnet, err)
		}
		for _, driver := range []string{api.DriverBridge, api.DriverMacvlan, api.DriverIPvlan, api.DriverOverlay} {
			a.mu.Lock()
			err := a.planSubnet(&networkRec{Name: "su", Driver: driver}, api.NetworkCreate{Subnet: subnet}, nil, nil)
			a.mu.Unlock()
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "special") {
				t.Errorf("%s on %s: %v, want invalid (special-use)", driver, subnet, err)
			}
		}
	}
	if n := len(a.Networks()); n != before {
		t.Fatalf("refused creates left %d networks, want %d", n, before)
	}
}

// TestSubnetHostRouteCheckPerDriver: bridge and overlay subnets must not
// overlap a host route (through the Host seam); macvlan and ipvlan
// subnets are the parent's LAN and may.
func TestSubnetHostRouteCheckPerDriver(t *testing.T) {
	dir := t.TempDir()
	a, err := New(Options{StateDir: dir, Socket: dir + "/sock", NodeName: "t", NoDefaultNetwork: true, NoDNS: true,
		Datapath: newFake(), Host: newFakeHost("10.99.0.0/16", "192.0.2.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateNetwork(context.Background(), api.NetworkCreate{Name: "b1", Subnet: "10.99.4.0/24"}); !errors.Is(err, ErrConflict) {
		t.Errorf("bridge inside a host route: %v, want conflict", err)
	}
	for driver, refused := range map[string]bool{api.DriverBridge: true, api.DriverOverlay: true, api.DriverMacvlan: false, api.DriverIPvlan: false} {
		a.mu.Lock()
		err := a.planSubnet(&networkRec{Name: "x", Driver: driver}, api.NetworkCreate{Subnet: "10.99.0.0/17"}, nil, nil)
		a.mu.Unlock()
		if refused != errors.Is(err, ErrConflict) {
			t.Errorf("%s over host route 10.99.0.0/16: %v, want refused=%v", driver, err, refused)
		}
	}
	// A picked subnet avoids the host's routes.
	n := &networkRec{Name: "p", Driver: api.DriverBridge}
	a.mu.Lock()
	err = a.planSubnet(n, api.NetworkCreate{}, []netip.Prefix{netip.MustParsePrefix("10.99.0.0/16"), netip.MustParsePrefix("10.98.0.0/16")}, nil)
	a.mu.Unlock()
	if err != nil || n.Subnet != netip.MustParsePrefix("10.98.0.0/16") {
		t.Fatalf("picked %s (%v), want 10.98.0.0/16", n.Subnet, err)
	}
}

// TestGossipedOverlayCheckedBeforeProgramming: an overlay network that
// arrives by gossip with a special-use subnet, or one that overlaps a
// route of this host, is not programmed here; it is reported in status
// and as an unhealthy network in the metrics, while the node that could
// take it does.
func TestGossipedOverlayCheckedBeforeProgramming(t *testing.T) {
	nodes := []*clusterNode{
		{name: "gs-a", dir: t.TempDir(), port: netnstest.FreePort(t), dp: newFake(), host: newFakeHost()},
		{name: "gs-b", dir: t.TempDir(), port: netnstest.FreePort(t), dp: newFake(), host: newFakeHost("10.221.0.0/16")},
	}
	nodes[1].seeds = []string{"127.0.0.1:" + strconv.Itoa(nodes[0].port)}
	for _, n := range nodes {
		n.start(t)
		t.Cleanup(n.stop)
	}
	A, B := nodes[0], nodes[1]
	netnstest.Eventually(t, 10*time.Second, "the two nodes never met", func() bool { return A.cl.NumAlive() == 2 && B.cl.NumAlive() == 2 })
	ctx := context.Background()
	ov, err := A.a.CreateNetwork(ctx, api.NetworkCreate{Name: "ovr", Driver: api.DriverOverlay, Subnet: "10.221.0.0/16"})
	if err != nil {
		t.Fatal(err)
	}
	// A record no agent would make: the cluster layer refuses it before it
	// is gossiped (and drops it when it arrives from a forged or buggy
	// member), so the agent's own check is the second line behind it.
	if _, err := A.cl.CreateNetwork(ctx, cluster.NetworkSpec{Name: "evil", Subnet: netip.MustParsePrefix("169.254.0.0/16")}); err == nil {
		t.Error("the cluster accepted an overlay on 169.254.0.0/16")
	}
	netnstest.Eventually(t, 10*time.Second, "node-b never reported ovr", func() bool {
		st := B.a.Status(ctx)
		return st.Cluster != nil && hasProblem(st.Cluster.Problems, `"ovr"`, "host route")
	})
	if _, ok := networkNamed(B.a, "ovr"); ok {
		t.Error("node-b set up ovr over its own host route")
	}
	for _, n := range []*clusterNode{A, B} {
		if _, ok := networkNamed(n.a, "evil"); ok {
			t.Errorf("%s set up a network on 169.254.0.0/16", n.name)
		}
		n.dp.mu.Lock()
		for _, dn := range n.dp.networks {
			if dn.Name == "evil" || (n == B && dn.Name == "ovr") {
				t.Errorf("%s programmed %s (%s)", n.name, dn.Name, dn.Subnet)
			}
		}
		n.dp.mu.Unlock()
	}
	if _, ok := networkNamed(A.a, "ovr"); !ok || ov.Subnet != "10.221.0.0/16" {
		t.Error("node-a, without that route, does not have ovr")
	}
	unhealthy := map[string]bool{}
	for _, n := range B.a.AgentMetrics().Networks {
		unhealthy[n.Name] = n.Unhealthy
	}
	if !unhealthy["ovr"] {
		t.Errorf("metrics networks of node-b %v: want ovr unhealthy", unhealthy)
	}
	// The agent's check refuses what the cluster's does, and more.
	if err := B.a.checkGossipedOverlay(netip.MustParsePrefix("169.254.0.0/16"), netip.MustParseAddr("169.254.0.1")); err == nil {
		t.Error("the agent's check accepts an overlay on 169.254.0.0/16")
	}
	if err := ipam.CheckSpecialUse(netip.MustParsePrefix("169.254.0.0/16")); err == nil {
		t.Fatal("169.254.0.0/16 is not special-use")
	}
}

func hasProblem(problems []string, parts ...string) bool {
	for _, p := range problems {
		ok := true
		for _, part := range parts {
			ok = ok && strings.Contains(p, part)
		}
		if ok {
			return true
		}
	}
	return false
}
