package agent

import (
	"context"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// TestRepairPassSyncsDesiredState: while the agent runs, the repair loop
// hands the datapath the whole desired state again and again (it is what
// puts back what was removed by hand), including what the API changed
// since the last pass.
func TestRepairPassSyncsDesiredState(t *testing.T) {
	dir, dp := t.TempDir(), newFake()
	a := newTestAgent(t, dir, dp)
	defer a.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.repairDatapath(ctx, 20*time.Millisecond) }()
	defer func() { cancel(); <-done }()

	if _, err := a.CreateNetwork(ctx, api.NetworkCreate{Name: "n1", Subnet: "10.201.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	dp.mu.Lock()
	before := len(dp.syncs)
	dp.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		dp.mu.Lock()
		n := len(dp.syncs)
		var names []string
		if n > 0 {
			for _, nw := range dp.syncs[n-1].Networks {
				names = append(names, nw.Name)
			}
		}
		dp.mu.Unlock()
		if n >= before+2 && len(names) == 2 { // the default network and n1
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s: %d passes since the network was made, last one's networks %v", n-before, names)
		}
		time.Sleep(10 * time.Millisecond) // polling, bounded by deadline
	}
}

// watchingFake is a fake datapath that reports drift when the test says.
type watchingFake struct {
	*fakeDatapath
	drift chan struct{}
}

func (w watchingFake) WatchDrift(ctx context.Context) (<-chan struct{}, error) { return w.drift, nil }

// TestRepairPassRunsOnDrift: a datapath that saw one of its links go gets
// a repair pass soon, not at the next interval (an hour here).
func TestRepairPassRunsOnDrift(t *testing.T) {
	dir, fake := t.TempDir(), newFake()
	dp := watchingFake{fakeDatapath: fake, drift: make(chan struct{}, 1)}
	a := newTestAgent(t, dir, dp)
	defer a.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.repairDatapath(ctx, time.Hour) }()
	defer func() { cancel(); <-done }()
	fake.mu.Lock()
	before := len(fake.syncs)
	fake.mu.Unlock()
	dp.drift <- struct{}{}
	deadline := time.Now().Add(10 * time.Second)
	for {
		fake.mu.Lock()
		n := len(fake.syncs)
		fake.mu.Unlock()
		if n > before {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no repair pass 10 s after drift was reported")
		}
		time.Sleep(10 * time.Millisecond) // polling, bounded by deadline
	}
}
