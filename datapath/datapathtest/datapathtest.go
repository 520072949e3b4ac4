// Package datapathtest holds what the tests of both datapaths share to
// show that drift is repaired (a repair loop like the agent's and a check
// that something removed by hand comes back) and to read the datapath's
// packet counters. It is imported by tests only.
package datapathtest

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// RepairEvery runs dp.Sync(s) every interval until the test ends, as the
// agent does every datapath.RepairInterval.
func RepairEvery(tb testing.TB, dp datapath.Datapath, s datapath.State, every time.Duration) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		datapath.Every(ctx, every, func() {
			if err := dp.Sync(ctx, s); err != nil && ctx.Err() == nil {
				tb.Logf("repair pass: %v", err)
			}
		})
	}()
	tb.Cleanup(func() { cancel(); <-done })
}

// Drift is one object removed by hand.
type Drift struct {
	Name   string // for messages
	Object string // its repair counter's label (datapath.Repair*)
	Remove func() error
	// Back reports whether the object is in place again (and works).
	Back func() bool
}

// CheckRepaired removes d's object and waits, at most within, until it
// is back and its repair counter moved; it returns how long that took.
func CheckRepaired(tb testing.TB, m datapath.MetricsReader, d Drift, within time.Duration) time.Duration {
	tb.Helper()
	before := repairs(tb, m, d.Object)
	t0 := time.Now()
	if err := d.Remove(); err != nil {
		tb.Fatalf("%s: remove by hand: %v", d.Name, err)
	}
	deadline := t0.Add(within)
	for {
		back := d.Back()
		if back && repairs(tb, m, d.Object) > before {
			return time.Since(t0)
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not repaired within %s (back %v, %s repairs %d, before %d)", d.Name, within, back, d.Object, repairs(tb, m, d.Object), before)
		}
		time.Sleep(50 * time.Millisecond) // polling a condition, bounded by deadline
	}
}

func repairs(tb testing.TB, m datapath.MetricsReader, object string) uint64 {
	tb.Helper()
	got, err := m.Metrics()
	if err != nil {
		tb.Fatalf("metrics: %v", err)
	}
	return got.Repairs[object]
}

// Traffic pings to from the namespace nsName, five times a second for at
// most 90 s, until the returned function stops it; that function fails
// the test if no reply came back meanwhile, and returns the pings'
// summaries. A ping that ends early (its interface was removed under it,
// which is the drift being tested) is started again after 200 ms.
func Traffic(tb testing.TB, nsName, to string) (stop func() string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	var (
		mu       sync.Mutex
		out      strings.Builder
		received bool
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			cmd := netnstest.Cmd(nsName, "ping", "-n", "-q", "-i", "0.2", "-w", "90", to)
			var run strings.Builder
			cmd.Stdout, cmd.Stderr = &run, &run
			if err := cmd.Start(); err == nil {
				stopped := make(chan struct{})
				go func() {
					select {
					case <-ctx.Done():
						_ = cmd.Process.Signal(os.Interrupt)
					case <-stopped:
					}
				}()
				_ = cmd.Wait()
				close(stopped)
			}
			sum := strings.TrimSpace(run.String())
			mu.Lock()
			if strings.Contains(sum, " received") && !strings.Contains(sum, " 0 received") {
				received = true
			}
			out.WriteString(sum + "\n")
			mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	tb.Cleanup(func() { cancel(); <-done })
	return func() string {
		tb.Helper()
		cancel()
		<-done
		mu.Lock()
		defer mu.Unlock()
		sum := strings.TrimSpace(out.String())
		if !received {
			tb.Errorf("no traffic got through:\n%s", sum)
		}
		return sum
	}
}

// Counter is m's packet count for direction/verdict/reason (0 while the
// datapath has counted none).
func Counter(tb testing.TB, m datapath.MetricsReader, dir, verdict, reason string) uint64 {
	tb.Helper()
	got, err := m.Metrics()
	if err != nil {
		tb.Fatalf("metrics: %v", err)
	}
	for _, c := range got.Counters {
		if c.Direction == dir && c.Verdict == verdict && c.Reason == reason {
			return c.Packets
		}
	}
	return 0
}

// WaitCounter waits, up to 3 s, for that count to pass from, and reports
// whether it did.
func WaitCounter(tb testing.TB, m datapath.MetricsReader, dir, verdict, reason string, from uint64) bool {
	tb.Helper()
	return netnstest.PollEvery(3*time.Second, 50*time.Millisecond, func() bool { return Counter(tb, m, dir, verdict, reason) > from })
}
