package agent

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/fabricnet/fabric/metrics"
)

// statusBound is how long Status or one metrics scrape may take while a
// slow cluster or datapath call is in progress. Neither does anything slow
// itself: far above their cost on a loaded machine, far below the calls
// they must not wait for.
const statusBound = 500 * time.Millisecond

// readersAnswer calls Status and gathers every metric family of a's
// registry until done is closed or until, with done nil, rounds calls
// were made; it fails the test if one took more than statusBound. It
// returns the number of rounds. Each also is called every round, under
// the same bound.
func readersAnswer(t *testing.T, a *Agent, done <-chan struct{}, rounds int, also ...func()) int {
	t.Helper()
	reg := metrics.NewRegistry(Version, "fake", a.MetricsSources(nil))
	deadline := time.Now().Add(40 * time.Second)
	n := 0
	for ; done != nil || n < rounds; n++ {
		if done != nil {
			select {
			case <-done:
				return n
			default:
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the slow call never ended")
		}
		within(t, "status", func() { _ = a.Status(context.Background()) })
		within(t, "a metrics scrape", func() {
			if _, err := reg.Gather(); err != nil {
				t.Errorf("gather metrics: %v", err)
			}
		})
		for _, f := range also {
			within(t, "another request", f)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return n
}

// within fails the test if f does not return within statusBound. f goes
// on in the background then (until the slow call it waits for ends).
func within(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	t0 := time.Now()
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(statusBound):
		t.Fatalf("%s took more than %v while a slow call was in progress: it waits for a lock that call holds", what, time.Since(t0).Round(time.Millisecond))
	}
}

// A cluster vote on a new overlay network waits for every member that is
// still counted alive, seconds for one that stopped answering. Status and
// the metrics must answer meanwhile.
func TestStatusAndMetricsAnswerDuringOverlayNetworkVote(t *testing.T) {
	nodes := newClusterNodes(t, "vote-a", "vote-b")
	A, B := nodes[0], nodes[1]
	netnstest.Eventually(t, 10*time.Second, "the two nodes never met", func() bool { return A.cl.NumAlive() == 2 && B.cl.NumAlive() == 2 })
	B.stop() // node-a still counts it alive for a few seconds: its vote is awaited
	start := time.Now()
	done := make(chan struct{})
	var err error
	go func() {
		defer close(done)
		_, err = A.a.CreateNetwork(context.Background(), api.NetworkCreate{Name: "ov", Driver: api.DriverOverlay, Subnet: "10.215.0.0/16"})
	}()
	// The vote holds no agent lock at all: other requests are answered too.
	polls := readersAnswer(t, A.a, done, 0, func() { _ = A.a.Networks() })
	took := time.Since(start)
	t.Logf("the overlay create took %v (err %v); status and metrics answered %d times meanwhile", took, err, polls)
	if took < time.Second {
		t.Skipf("the vote did not wait for the stopped member (%v): nothing measured", took)
	}
}

// gatedRemotes makes the fake datapath's SetRemotes wait until the test
// opens the gate, as a datapath that takes long to program a cluster's
// endpoints does.
type gatedRemotes struct {
	entered chan struct{} // closed when SetRemotes first waits
	gate    chan struct{}
	in, out sync.Once
}

// Programming remote endpoints is a datapath call the cluster sync makes;
// status and the metrics must not wait for it.
func TestStatusAndMetricsAnswerDuringSlowRemoteProgramming(t *testing.T) {
	nodes := newClusterNodes(t, "slow-a", "slow-b")
	A, B := nodes[0], nodes[1]
	ctx := context.Background()
	netnstest.Eventually(t, 10*time.Second, "the two nodes never met", func() bool { return A.cl.NumAlive() == 2 && B.cl.NumAlive() == 2 })
	ov, err := A.a.CreateNetwork(ctx, api.NetworkCreate{Name: "ov", Driver: api.DriverOverlay, Subnet: "10.216.0.0/16"})
	if err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 5*time.Second, "node-b never got the overlay network", func() bool { _, ok := networkNamed(B.a, "ov"); return ok })

	g := &gatedRemotes{entered: make(chan struct{}), gate: make(chan struct{})}
	A.dp.mu.Lock()
	A.dp.gate = g
	A.dp.mu.Unlock()
	t.Cleanup(g.open) // before the nodes stop (cleanups run last first)
	if _, err := B.a.CreateSandbox(ctx, api.SandboxCreate{Name: sandboxName(t, "slow"), Network: "ov"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.entered:
	case <-time.After(20 * time.Second):
		t.Fatal("node-a never programmed node-b's endpoint")
	}
	readersAnswer(t, A.a, nil, 25)
	g.open()
	netnstest.Eventually(t, 10*time.Second, "node-a never finished programming node-b's endpoint", func() bool { return len(A.dp.remotesOf(ov.ID)) == 1 })
}

func (g *gatedRemotes) open() { g.out.Do(func() { close(g.gate) }) }

// wait blocks a SetRemotes call until the gate opens.
func (g *gatedRemotes) wait() {
	g.in.Do(func() { close(g.entered) })
	<-g.gate
}

var _ datapath.Datapath = (*fakeDatapath)(nil)
