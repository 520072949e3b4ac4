package kernel

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/datapathtest"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// driftInterval is the repair interval of the drift tests (the agent's is
// datapath.RepairInterval); a repair must land within two of them plus
// the time a pass takes on a loaded machine.
const driftInterval = time.Second

// TestDriftIsRepaired: while one sandbox pings another, a host veth, the
// nftables table and an overlay FDB entry are removed by hand; the
// periodic Sync puts each back without a restart and counts the repair.
func TestDriftIsRepaired(t *testing.T) {
	a, _, _, bIP := overlayHosts(t, "198.19.93", 4789)
	n := overlayNetwork("drift", "br-drift", "10.93.0.0/24", 93)
	a.ensureNetwork(n)
	j1, j2 := a.join(n, "e1", "vd1", 2), a.join(n, "e2", "vd2", 3)
	s1, e1, e2 := j1.name, j1.ep, j2.ep
	remote := datapath.Remote{Addr: netip.MustParseAddr("10.93.0.9"), MAC: net.HardwareAddr{0x02, 0x42, 10, 93, 0, 9}, Node: bIP}
	a.setRemotes(n, remote)
	mustPing(t, s1, "10.93.0.3")

	// Traffic throughout, bounded in time.
	stop := datapathtest.Traffic(t, s1, "10.93.0.3")

	s := datapath.State{Networks: []datapath.Network{n}, Endpoints: []datapath.Endpoint{e1, e2}, Remotes: map[string][]datapath.Remote{n.ID: {remote}}}
	// Without drift a pass compares and writes nothing: the table is not
	// replaced (same handle) and nothing counts as repaired.
	for range 2 {
		if err := a.dp.Sync(ctx, s); err != nil {
			t.Fatalf("Sync: %v", err)
		}
	}
	handle := a.tableHandle()
	if err := a.dp.Sync(ctx, s); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if m, _ := a.dp.Metrics(); len(m.Repairs) != 0 || a.tableHandle() != handle {
		t.Fatalf("a pass without drift repaired %v, table handle %s -> %s", m.Repairs, handle, a.tableHandle())
	}
	datapathtest.RepairEvery(t, a.dp, s, driftInterval)
	run := func(args ...string) func() error {
		return func() error {
			if out, err := netnstest.Cmd(a.hostName, args...).CombinedOutput(); err != nil {
				return &cmdError{args, err, out}
			}
			return nil
		}
	}
	vx := vxlanName(n)
	for _, d := range []datapathtest.Drift{
		{Name: "host veth", Object: datapath.RepairVeth, Remove: run("ip", "link", "del", "vd2"),
			Back: func() bool { return !a.linkGone("vd2") && ping(s1, "10.93.0.3") == nil }},
		{Name: "nftables table", Object: datapath.RepairNFTables, Remove: run("nft", "delete", "table", "ip", tableName),
			Back: func() bool { return netnstest.Cmd(a.hostName, "nft", "list", "table", "ip", tableName).Run() == nil }},
		{Name: "FDB entry", Object: datapath.RepairForward, Remove: run("bridge", "fdb", "del", remote.MAC.String(), "dev", vx, "dst", bIP.String()),
			Back: func() bool {
				fdb, _ := a.tunnelEntries(vx)
				return len(fdb) == 1 && strings.HasPrefix(fdb[0], remote.MAC.String()+">"+bIP.String())
			}},
	} {
		took := datapathtest.CheckRepaired(t, a.dp, d, 2*driftInterval+10*time.Second)
		t.Logf("%s repaired after %s (interval %s)", d.Name, took.Round(time.Millisecond), driftInterval)
	}
	mustPing(t, s1, "10.93.0.3")
	t.Logf("traffic: %s", stop())
}

type cmdError struct {
	args []string
	err  error
	out  []byte
}

func (e *cmdError) Error() string {
	return strings.Join(e.args, " ") + ": " + e.err.Error() + ": " + strings.TrimSpace(string(e.out))
}

func (e *cmdError) Unwrap() error { return e.err }

// TestWatchDriftSignalsDeletedLink: deleting one of fabric's links by hand
// is signalled at once (the agent's repair pass then runs without waiting
// for its interval).
func TestWatchDriftSignalsDeletedLink(t *testing.T) {
	l := newLab(t)
	n := l.bridgeNetwork("watch", "br-watch", "10.94.0.0/24", false)
	l.join(n, "w1", "vw1", 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	drift, err := l.dp.WatchDrift(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l.expectDriftOnDelete(drift, cancel, "vw1")
}

// expectDriftOnDelete deletes one of fabric's links by hand and expects a
// signal on drift within 10 s; then it ends the watch with cancel and
// waits for drift to close.
func (l *lab) expectDriftOnDelete(drift <-chan struct{}, cancel context.CancelFunc, link string) {
	l.t.Helper()
	netnstest.Run(l.t, l.hostName, "ip", "link", "del", link)
	select {
	case <-drift:
	case <-time.After(10 * time.Second):
		l.t.Fatalf("no signal 10 s after fabric's link %s was deleted by hand", link)
	}
	cancel()
	for range drift { // closed once ctx ends
	}
}

// TestWatchDriftIgnoresOwnDeletes: an endpoint removed through the
// datapath is no drift, so no repair pass follows each sandbox removal
// (a pass walks every endpoint under the agent's lock: with one after each
// removal, set-up got slower the more sandboxes there were); a veth
// deleted by hand afterwards still signals.
func TestWatchDriftIgnoresOwnDeletes(t *testing.T) {
	l := newLab(t)
	n := network("own", "br-own", "10.95.0.0/24", false)
	l.ensureNetwork(n)
	_, p := l.sandbox()
	mine := endpoint("o1", n, p, "eth0", "vo1", 2, true)
	l.ensureEndpoint(n, mine)
	_, p2 := l.sandbox()
	l.ensureEndpoint(n, endpoint("o2", n, p2, "eth0", "vo2", 3, true))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	drift, err := l.dp.WatchDrift(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.dp.DeleteEndpoint(ctx, n, mine); err != nil {
		t.Fatal(err)
	}
	select {
	case <-drift:
		t.Fatal("the datapath's own endpoint removal was signalled as drift")
	case <-time.After(2 * time.Second): // bounded: the event comes within milliseconds
	}
	l.expectDriftOnDelete(drift, cancel, "vo2")
}
