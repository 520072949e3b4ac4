package agent

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
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
	netnstest.Until(t, 10*time.Second, "two repair passes with the new network", func() error {
		dp.mu.Lock()
		defer dp.mu.Unlock()
		n := len(dp.syncs)
		var names []string
		if n > 0 {
			for _, nw := range dp.syncs[n-1].Networks {
				names = append(names, nw.Name)
			}
		}
		if n >= before+2 && len(names) == 2 { // the default network and n1
			return nil
		}
		return fmt.Errorf("%d passes since the network was made, last one's networks %v", n-before, names)
	})
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
	netnstest.Eventually(t, 10*time.Second, "a repair pass after drift was reported", func() bool {
		fake.mu.Lock()
		defer fake.mu.Unlock()
		return len(fake.syncs) > before
	})
}
