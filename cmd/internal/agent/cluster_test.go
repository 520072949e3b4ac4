package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cluster"
	"github.com/fabricnet/fabric/cluster/gossipkey"
	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// testLogWriter sends a node's log to the test log (with -v).
type testLogWriter struct {
	t    *testing.T
	name string
}

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(w.name + ": " + string(p))
	return len(p), nil
}

type clusterNode struct {
	name, dir string
	port      int
	seeds     []string
	keys      [][]byte
	host      Host // nil: a fake host
	dp        *fakeDatapath
	cl        *cluster.Cluster
	a         *Agent
	cancel    context.CancelFunc
	done      chan struct{}
}

// start (re)starts the node's gossip and agent on its state dir.
func (n *clusterNode) start(t *testing.T) {
	t.Helper()
	var w io.Writer = io.Discard
	if testing.Verbose() {
		w = testLogWriter{t, n.name}
	}
	log := slog.New(slog.NewTextHandler(w, nil))
	if n.host == nil {
		n.host = newFakeHost()
	}
	// The identity key lives in the state dir, as fabricd keeps it.
	id, err := gossipkey.LoadOrCreateIdentity(filepath.Join(n.dir, "cluster-identity.key"))
	if err != nil {
		t.Fatal(err)
	}
	cl, err := cluster.New(cluster.Config{
		NodeName: n.name, BindAddr: "127.0.0.1", BindPort: n.port, Join: n.seeds, SecretKeys: n.keys, NodeKey: id,
		JoinBackoffMin: 100 * time.Millisecond, JoinBackoffMax: time.Second, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Options{
		StateDir: n.dir, Socket: filepath.Join(n.dir, "sock"), NodeName: n.name, NoDefaultNetwork: true, NoDNS: true,
		Datapath: n.dp, Log: log, Cluster: cl, Host: n.host,
		Tunnel: datapath.Tunnel{Local: netip.MustParseAddr("127.0.0.1"), Port: 4789},
	})
	if err != nil {
		cl.Stop()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := a.Start(ctx); err != nil {
		cancel()
		a.Close()
		cl.Stop()
		t.Fatal(err)
	}
	n.cl, n.a, n.cancel, n.done = cl, a, cancel, make(chan struct{})
	go func() { _ = cl.Run(ctx) }()
	go func() { a.RunCluster(ctx); close(n.done) }()
}

// stop is a crash of both: no leave, nothing cleaned up.
func (n *clusterNode) stop() {
	if n.a == nil {
		return
	}
	n.cancel()
	<-n.done
	n.cl.Stop()
	n.a.Close()
	n.a = nil
}

func newClusterNodes(t *testing.T, names ...string) []*clusterNode {
	return newClusterNodesWithKeys(t, nil, names...)
}

func newClusterNodesWithKeys(t *testing.T, keys [][]byte, names ...string) []*clusterNode {
	var nodes []*clusterNode
	var seed string
	for i, name := range names {
		n := &clusterNode{name: name, dir: t.TempDir(), port: netnstest.FreePort(t), dp: newFake(), keys: keys}
		if i == 0 {
			seed = "127.0.0.1:" + strconv.Itoa(n.port)
		} else {
			n.seeds = []string{seed}
		}
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		n.start(t)
		t.Cleanup(n.stop)
	}
	return nodes
}

func (f *fakeDatapath) remotesOf(id string) []datapath.Remote {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]datapath.Remote(nil), f.remotes[id]...)
}

func hasRemote(rs []datapath.Remote, ip string) bool {
	for _, r := range rs {
		if r.Addr.String() == ip {
			return true
		}
	}
	return false
}

func networkNamed(a *Agent, name string) (api.Network, bool) {
	n, err := a.Network(name)
	return n, err == nil
}

func TestOverlayNetworksEndpointsAndRemotesFollowTheCluster(t *testing.T) {
	nodes := newClusterNodes(t, "node-a", "node-b")
	A, B := nodes[0], nodes[1]
	ctx := context.Background()
	netnstest.Eventually(t, 10*time.Second, "the two nodes never met", func() bool { return A.cl.NumAlive() == 2 && B.cl.NumAlive() == 2 })

	ov := createOverlayEverywhere(t, A, B)
	sa, sb := overlaySandboxesOnBoth(t, A, B, ov)
	ipA := netip.MustParsePrefix(sa.Endpoints[0].IP).Addr()
	ipB := netip.MustParsePrefix(sb.Endpoints[0].IP).Addr()
	restartAndDeath(t, A, B, ov, sa, ipA, ipB)

	// With every endpoint gone the network can be removed, from any node.
	if err := A.a.RemoveSandbox(ctx, sa.Name); err != nil {
		t.Fatal(err)
	}
	if err := B.a.RemoveSandbox(ctx, sb.Name); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 5*time.Second, "node-b still sees node-a's endpoint", func() bool { return len(B.cl.Endpoints("ov")) == 0 })
	if err := B.a.RemoveNetwork(ctx, "ov"); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 5*time.Second, "node-a kept the removed overlay network", func() bool { _, ok := networkNamed(A.a, "ov"); return !ok })
	A.dp.mu.Lock()
	_, still := A.dp.networks[ov.ID]
	A.dp.mu.Unlock()
	if still {
		t.Fatal("node-a's datapath still has the removed overlay network")
	}
}

// createOverlayEverywhere creates overlay network ov on A, checks that B
// gets it and that conflicting and bad creates are refused everywhere.
func createOverlayEverywhere(t *testing.T, A, B *clusterNode) api.Network {
	t.Helper()
	ctx := context.Background()
	ov, err := A.a.CreateNetwork(ctx, api.NetworkCreate{Name: "ov", Driver: api.DriverOverlay, Subnet: "10.210.0.0/16"})
	if err != nil {
		t.Fatal(err)
	}
	if ov.Driver != api.DriverOverlay || ov.Scope != "cluster" || ov.VNI == 0 || ov.MTU != 65536-datapath.VXLANOverhead {
		t.Fatalf("overlay network %+v: want driver overlay, scope cluster, a VNI and MTU of lo minus 50", ov)
	}
	// A second create of the same name anywhere is refused.
	if _, err := A.a.CreateNetwork(ctx, api.NetworkCreate{Name: "ov", Driver: api.DriverOverlay, Subnet: "10.211.0.0/16"}); !errors.Is(err, ErrConflict) {
		t.Errorf("second create of ov: %v, want conflict", err)
	}
	netnstest.Eventually(t, 5*time.Second, "node-b never got the overlay network", func() bool { _, ok := networkNamed(B.a, "ov"); return ok })
	bov, _ := networkNamed(B.a, "ov")
	if bov.ID != ov.ID || bov.VNI != ov.VNI || bov.Subnet != ov.Subnet {
		t.Fatalf("node-b's copy %+v differs from node-a's %+v", bov, ov)
	}
	if _, err := B.a.CreateNetwork(ctx, api.NetworkCreate{Name: "ov2", Driver: api.DriverOverlay, Subnet: "10.210.128.0/24"}); !errors.Is(err, ErrConflict) {
		t.Errorf("overlapping overlay subnet from node-b: %v, want conflict", err)
	}
	// Bad overlay requests are refused and create nothing anywhere.
	for _, req := range []api.NetworkCreate{
		{Name: "bad", Driver: api.DriverOverlay, Subnet: "10.213.0.0/16", Options: map[string]string{"block_bits": "40"}},
		{Name: "bad", Driver: api.DriverOverlay, Subnet: "10.213.0.0/16", Options: map[string]string{"vni": "0"}},
		{Name: "bad", Driver: api.DriverOverlay, Subnet: "10.213.0.0/16", Options: map[string]string{"mtu": "9"}},
		{Name: "bad", Driver: api.DriverOverlay, Subnet: "10.213.0.0/16", Options: map[string]string{"parent": "eth0"}},
		{Name: "bad", Driver: api.DriverOverlay, Subnet: "10.213.0.0/16", IPRange: "10.213.1.0/24"},
		{Name: "bad", Driver: api.DriverOverlay, Subnet: "10.213.0.1/16"},
		{Name: "bad", Driver: api.DriverOverlay, Gateway: "10.213.0.1"},
	} {
		if _, err := B.a.CreateNetwork(ctx, req); !errors.Is(err, ErrInvalid) {
			t.Errorf("overlay create %+v: %v, want invalid", req, err)
		}
	}
	if n := len(A.cl.Networks()); n != 1 {
		t.Fatalf("refused requests left %d cluster networks, want 1", n)
	}

	return ov
}

// overlaySandboxesOnBoth makes a sandbox on ov on each node, checks that
// each node programs the other's endpoint, and that a static address in
// use elsewhere and the removal of a network in use are refused.
func overlaySandboxesOnBoth(t *testing.T, A, B *clusterNode, ov api.Network) (sa, sb api.Sandbox) {
	t.Helper()
	ctx := context.Background()
	sbA := sandboxName(t, "ova")
	sbB := sandboxName(t, "ovb")
	var err error
	sa, err = A.a.CreateSandbox(ctx, api.SandboxCreate{Name: sbA, Network: "ov"})
	if err != nil {
		t.Fatal(err)
	}
	sb, err = B.a.CreateSandbox(ctx, api.SandboxCreate{Name: sbB, Network: "ov"})
	if err != nil {
		t.Fatal(err)
	}
	ipA := netip.MustParsePrefix(sa.Endpoints[0].IP).Addr()
	ipB := netip.MustParsePrefix(sb.Endpoints[0].IP).Addr()
	blockA, blockB := netip.PrefixFrom(ipA, 24).Masked(), netip.PrefixFrom(ipB, 24).Masked()
	if blockA == blockB {
		t.Fatalf("both nodes allocated from block %s (%s, %s): blocks must be per node", blockA, ipA, ipB)
	}
	netnstest.Eventually(t, 5*time.Second, "node-a never programmed node-b's endpoint", func() bool { return hasRemote(A.dp.remotesOf(ov.ID), ipB.String()) })
	netnstest.Eventually(t, 5*time.Second, "node-b never programmed node-a's endpoint", func() bool { return hasRemote(B.dp.remotesOf(ov.ID), ipA.String()) })
	if r := A.dp.remotesOf(ov.ID); len(r) != 1 || r[0].Node.String() != "127.0.0.1" {
		t.Fatalf("node-a's remotes %+v: want only node-b's endpoint, at node-b's tunnel address", r)
	}

	// A static address another node uses is refused, and changes nothing.
	sbX := sandboxName(t, "ovx")
	if _, err := B.a.CreateSandbox(ctx, api.SandboxCreate{Name: sbX, Network: "ov", IP: ipA.String()}); !errors.Is(err, ErrConflict) {
		t.Fatalf("static --ip %s used on node-a, from node-b: %v, want conflict", ipA, err)
	}
	if len(B.a.Endpoints()) != 1 {
		t.Fatalf("refused sandbox left endpoints on node-b: %+v", B.a.Endpoints())
	}
	// Removing the network anywhere is refused while endpoints remain.
	if err := B.a.RemoveNetwork(ctx, "ov"); !errors.Is(err, ErrConflict) {
		t.Fatalf("remove ov with endpoints on both nodes: %v, want conflict", err)
	}

	return sa, sb
}

// restartAndDeath crashes and restarts node-a (its state stays, and the
// first Sync has node-b's endpoint), then kills node-b (node-a drops its
// endpoint and reports it) and brings it back.
func restartAndDeath(t *testing.T, A, B *clusterNode, ov api.Network, sa api.Sandbox, ipA, ipB netip.Addr) {
	t.Helper()
	ctx := context.Background()
	// node-a crashes and comes back: its network, endpoint and address stay,
	// and the datapath gets node-b's endpoint at the first Sync, before
	// gossip caught up.
	A.stop()
	A.dp.mu.Lock()
	A.dp.syncs = nil
	A.dp.mu.Unlock()
	A.start(t)
	A.dp.mu.Lock()
	first := A.dp.syncs[0]
	A.dp.mu.Unlock()
	if !hasRemote(first.Remotes[ov.ID], ipB.String()) {
		t.Fatalf("first Sync after restart has remotes %+v; want node-b's endpoint %s", first.Remotes, ipB)
	}
	if eps := A.a.Endpoints(); len(eps) != 1 || eps[0].IP != sa.Endpoints[0].IP {
		t.Fatalf("after restart node-a has endpoints %+v", eps)
	}
	netnstest.Eventually(t, 20*time.Second, "node-a never rejoined", func() bool { return A.cl.NumAlive() == 2 })
	netnstest.Eventually(t, 5*time.Second, "node-b lost node-a's endpoint after the restart", func() bool { return hasRemote(B.dp.remotesOf(ov.ID), ipA.String()) })

	// node-a forwards to node-b's endpoint again (a sync while node-a was
	// rejoining may have seen node-b as not alive yet).
	netnstest.Eventually(t, 10*time.Second, "node-a never forwarded to node-b's endpoint after its restart", func() bool { return hasRemote(A.dp.remotesOf(ov.ID), ipB.String()) })
	// node-b dies: node-a drops its endpoint from the datapath.
	t0 := time.Now()
	B.stop()
	netnstest.Eventually(t, 10*time.Second, "node-a kept forwarding to dead node-b's endpoint", func() bool { return !hasRemote(A.dp.remotesOf(ov.ID), ipB.String()) })
	t.Logf("node-b's endpoint dropped on node-a %v after node-b died", time.Since(t0).Round(10*time.Millisecond))
	st := A.a.Status(ctx)
	degraded := false
	for _, w := range st.Warnings {
		degraded = degraded || strings.Contains(w, "cluster member node-b is failed")
	}
	if !degraded || st.Cluster == nil || st.Cluster.Alive != 1 {
		t.Errorf("status with node-b dead: warnings %q, cluster %+v; want node-b reported failed", st.Warnings, st.Cluster)
	}
	if m := A.a.ClusterMetrics(); m.Members.Dead != 1 || m.Members.Alive != 1 || m.Leases < 1 {
		t.Errorf("cluster metrics with node-b dead: %+v; want 1 alive, 1 dead, node-a's lease counted", m)
	}
	B.start(t)
	netnstest.Eventually(t, 10*time.Second, "node-b's endpoint never came back on node-a", func() bool { return hasRemote(A.dp.remotesOf(ov.ID), ipB.String()) })

}

func TestGossipKeyRotationAndWrongKey(t *testing.T) {
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	nodes := newClusterNodesWithKeys(t, [][]byte{k1}, "key-a", "key-b")
	A, B := nodes[0], nodes[1]
	ctx := context.Background()
	netnstest.Eventually(t, 10*time.Second, "the two nodes never met", func() bool { return A.cl.NumAlive() == 2 && B.cl.NumAlive() == 2 })
	b64 := func(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

	// Bad requests change nothing.
	for _, req := range []api.KeyOp{{Op: "install", Key: "!!"}, {Op: "install", Key: b64([]byte("short"))}, {Op: "rotate", Key: b64(k2)}} {
		if err := A.a.KeyOp(ctx, req); !errors.Is(err, ErrInvalid) {
			t.Errorf("KeyOp %+v: %v, want invalid", req, err)
		}
	}
	if keys, _ := B.a.Keys(); len(keys) != 1 {
		t.Fatalf("refused key operations changed node-b's keyring: %+v", keys)
	}
	// install, use, remove: every step reaches node-b, and the two stay
	// together throughout.
	for _, op := range []api.KeyOp{{Op: "install", Key: b64(k2)}, {Op: "use", Key: b64(k2)}, {Op: "remove", Key: b64(k1)}} {
		if err := A.a.KeyOp(ctx, op); err != nil {
			t.Fatalf("key %s: %v", op.Op, err)
		}
		if A.cl.NumAlive() != 2 || B.cl.NumAlive() != 2 {
			t.Fatalf("after key %s the nodes lost each other", op.Op)
		}
	}
	keys, err := B.a.Keys()
	if err != nil || len(keys) != 1 || !keys[0].Primary || keys[0].Fingerprint != keyFingerprint(k2) {
		t.Fatalf("node-b's keys after the rotation: %+v, %v; want only the new key, primary", keys, err)
	}
	// Gossip still flows under the new key: a network made on node-a
	// reaches node-b.
	if _, err := A.a.CreateNetwork(ctx, api.NetworkCreate{Name: "rotated", Driver: api.DriverOverlay, Subnet: "10.212.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 5*time.Second, "node-b never got the network created after the rotation", func() bool { _, ok := networkNamed(B.a, "rotated"); return ok })

	// A node with the old (now removed) key cannot join and says why.
	C := &clusterNode{name: "key-c", dir: t.TempDir(), port: netnstest.FreePort(t), dp: newFake(), keys: [][]byte{k1},
		seeds: []string{"127.0.0.1:" + strconv.Itoa(A.port)}}
	C.start(t)
	t.Cleanup(C.stop)
	_, err = C.cl.Join(ctx, "127.0.0.1:"+strconv.Itoa(A.port))
	if !errors.Is(err, cluster.ErrKeyMismatch) {
		t.Fatalf("join with the removed key: %v, want a key mismatch", err)
	}
	// Its status says it is alone, and why.
	netnstest.Eventually(t, 5*time.Second, "node-c's status never said why it is not joined", func() bool {
		for _, w := range C.a.Status(ctx).Warnings {
			if strings.Contains(w, "not joined to the cluster") && strings.Contains(w, "gossip keys") {
				return true
			}
		}
		return false
	})
	if A.cl.NumAlive() != 2 || C.cl.NumAlive() != 1 {
		t.Fatalf("a node with a wrong key got in: node-a sees %d, node-c sees %d", A.cl.NumAlive(), C.cl.NumAlive())
	}
}

// A one-off cluster event is a status warning for eventWarningTTL, then it
// ends, so `fabricctl status` is not degraded forever by one lost conflict.
func TestEventWarningsExpire(t *testing.T) {
	h := newHealth()
	h.noteEvent("overlay network ov: lost")
	h.noteEvent("address block 10.9.1.0/24 was taken away")
	h.noteEvent("overlay network ov: lost") // the same event again: one entry
	now := time.Now()
	got := h.eventWarnings(now)
	if len(got) != 2 || !strings.HasPrefix(got[0], "address block") || !strings.HasPrefix(got[1], "overlay network ov: lost (at ") {
		t.Fatalf("warnings right after the events: %q; want the two events, latest last, with their time", got)
	}
	if got := h.eventWarnings(now.Add(eventWarningTTL - time.Second)); len(got) != 2 {
		t.Errorf("warnings just before the TTL: %q; want both", got)
	}
	if got := h.eventWarnings(now.Add(eventWarningTTL + time.Second)); len(got) != 0 {
		t.Errorf("warnings after the TTL: %q; want none", got)
	}
}

// A vote on an overlay address can take seconds (a member that stopped
// answering is still asked until it is declared failed); status and
// metrics must answer meanwhile: the vote runs without the agent lock.
func TestStatusAnswersDuringVote(t *testing.T) {
	nodes := newClusterNodes(t, "node-a", "node-b")
	A, B := nodes[0], nodes[1]
	ctx := context.Background()
	netnstest.Eventually(t, 10*time.Second, "the two nodes never met", func() bool { return A.cl.NumAlive() == 2 && B.cl.NumAlive() == 2 })
	if _, err := A.a.CreateNetwork(ctx, api.NetworkCreate{Name: "ov", Driver: api.DriverOverlay, Subnet: "10.214.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 5*time.Second, "node-b never got the overlay network", func() bool { _, ok := networkNamed(B.a, "ov"); return ok })
	B.stop() // node-a still counts it alive for a few seconds: its vote is awaited

	name := sandboxName(t, "vote")
	t.Cleanup(func() { netnstest.Remove(name) })
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := A.a.CreateSandbox(ctx, api.SandboxCreate{Name: name, Network: "ov", IP: "10.214.3.7"})
		done <- err
	}()
	var slowest time.Duration
	var polls int
	var err error
wait:
	for {
		select {
		case err = <-done:
			break wait
		default:
		}
		t0 := time.Now()
		_ = A.a.Status(ctx)
		_ = A.a.AgentMetrics()
		slowest = max(slowest, time.Since(t0))
		polls++
		if time.Since(start) > 30*time.Second {
			t.Fatal("the create never returned")
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(start)
	t.Logf("create took %v (%v); %d status calls meanwhile, slowest %v", took, err, polls, slowest)
	if err != nil {
		t.Fatalf("create with node-b gone: %v", err)
	}
	if took < time.Second {
		t.Skipf("the vote did not block (%v): nothing measured", took)
	}
	if slowest > 500*time.Millisecond {
		t.Errorf("status took %v while a vote ran for %v: the agent lock is held across the vote", slowest, took)
	}
}

// TestOrderRemotesLeaseHolderFirst: of two nodes publishing one address
// (a lease collision after a partition), the lease holder's entry comes
// first, which the datapath keeps while it skips the other; without a
// holder the lower node name wins. Either way the order is the same
// whatever order gossip listed them in.
func TestOrderRemotesLeaseHolderFirst(t *testing.T) {
	ip := netip.MustParseAddr
	cand := func(addr, node string, last byte) remoteCandidate {
		return remoteCandidate{r: datapath.Remote{Addr: ip(addr), MAC: net.HardwareAddr{2, 0, 0, 0, 0, last}, Node: ip("192.0.2." + strconv.Itoa(int(last)))}, node: node}
	}
	holders := map[netip.Addr]string{ip("10.9.0.5"): "zeta"}
	holder := func(a netip.Addr) string { return holders[a] }
	for _, order := range [][]int{{0, 1, 2, 3}, {3, 2, 1, 0}, {1, 3, 0, 2}} {
		base := []remoteCandidate{
			cand("10.9.0.5", "alpha", 1), cand("10.9.0.5", "zeta", 2), // zeta holds the lease
			cand("10.9.0.7", "omega", 3), cand("10.9.0.7", "beta", 4), // nobody does: beta (lower name)
		}
		cands := make([]remoteCandidate, 0, len(base))
		for _, i := range order {
			cands = append(cands, base[i])
		}
		got := orderRemotes(cands, holder)
		kept, skipped := datapath.FilterRemotes(datapath.Network{
			ID: "n", Driver: datapath.DriverOverlay, Subnet: netip.MustParsePrefix("10.9.0.0/24"), Gateway: ip("10.9.0.1"), VNI: 9,
		}, ip("192.0.2.100"), got)
		if len(kept) != 2 || kept[0].Node != ip("192.0.2.2") || kept[1].Node != ip("192.0.2.4") {
			t.Errorf("order %v: kept %v, want zeta's 10.9.0.5 and beta's 10.9.0.7", order, kept)
		}
		if len(skipped) != 2 || skipped[0].Reason != datapath.SkipDuplicate {
			t.Errorf("order %v: skipped %v, want the two losers as duplicates", order, skipped)
		}
	}
}
