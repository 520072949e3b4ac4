package main

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fabricnet/fabric/cluster"
)

// Bounds and shape of one membership run.
var (
	membershipJoinLimit = 60 * time.Second // every member joined and seeing all n, plus joinLimitPerMember each
	membershipFailLimit = 60 * time.Second // every member dropped the crashed one
	membershipJoiners   = 16               // joins in flight at once
	membershipSeeds     = 3                // members an agent lists to join through
	// membershipWave: above this many members they join in waves of this
	// many, each wave once the members before it see each other, as a large
	// cluster's agents come up over time; up to it, all at once.
	membershipWave = 200
)

// joinLimitPerMember lengthens the join limit with the cluster: 120 s for
// 1,000 members, so that a slow run still gives a figure.
const joinLimitPerMember = 60 * time.Millisecond

// atFullView, if set, is called when the memory is measured (tests take
// a heap profile there).
var atFullView func()

// convergence is one in-process membership run.
type convergence struct {
	fullView     time.Duration // first join until every member sees all n alive
	lastWave     time.Duration // first join of the last wave until then
	failureSeen  time.Duration // crash of one member until every other dropped it
	memPerMember float64       // Go heap and stacks live per member at full view (or when the run gave up), bytes
	goroutines   float64       // goroutines per member then
	cpu          time.Duration // CPU time this process used from the first join to full view
	// The cost of the joins, also when a run gave up: CPU time from the
	// first join until full view (or giving up), members joined by then,
	// and the datagrams and bytes all members received meanwhile.
	joinCPU   time.Duration
	joined    int
	reached   waveReached
	packetsIn uint64
	bytesIn   uint64
}

// measureConvergence starts n gossip members on 127.0.0.1 in this process,
// each with the cluster package's production configuration (a gossip key,
// as an agent must have, and an identity key of its own), joins them, and
// measures the full view, then crashes one member (no leave) and measures
// until every other member has declared it dead. Each member's events are
// read as the agent reads them. Everything it starts is stopped before it
// returns. The members share the machine's CPUs, so large n on few cores
// measures the scheduler too; an error says how far the run got.
func measureConvergence(n int) (conv convergence, err error) {
	if n < 3 {
		return conv, fmt.Errorf("need at least 3 members, got %d", n)
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	g0 := runtime.NumGoroutine()
	members, stop, err := startMembers(n)
	defer stop()
	if err != nil {
		return conv, err
	}
	cpu0 := processCPU()
	traffic0 := sumTraffic(members)
	var joined atomic.Int64
	conv.fullView, conv.lastWave, err = joinInWaves(members, &joined, &conv.reached)
	conv.joinCPU = processCPU() - cpu0
	if err == nil {
		conv.cpu = conv.joinCPU
	}
	conv.joined = int(joined.Load()) + 1
	traffic := sumTraffic(members)
	conv.packetsIn, conv.bytesIn = traffic.PacketsIn-traffic0.PacketsIn, traffic.BytesIn-traffic0.BytesIn
	// Live memory: what the members hold, not the garbage of the joins;
	// measured also when the run gives up, as far as it got.
	runtime.GC()
	var at runtime.MemStats
	runtime.ReadMemStats(&at)
	conv.memPerMember = (float64(at.HeapInuse+at.StackInuse) - float64(before.HeapInuse+before.StackInuse)) / float64(n)
	conv.goroutines = float64(runtime.NumGoroutine()-g0) / float64(n)
	if atFullView != nil {
		atFullView()
	}
	if err != nil {
		return conv, err
	}

	victim, rest := members[n-1], members[:n-1]
	_ = victim.Stop()
	start := time.Now()
	if !pollUntil(start.Add(membershipFailLimit), func() bool { return allSee(rest, n-1) }) {
		return conv, fmt.Errorf("failure of %s not seen by all after %s: %s", victim.Name(), time.Since(start).Round(time.Millisecond), viewProgress(rest, n-1))
	}
	conv.failureSeen = time.Since(start)
	return conv, nil
}

// startMembers starts n members, each with a reader of its events. stop
// stops them all (a stopped one again is harmless) and the readers.
func startMembers(n int) (members []*cluster.Cluster, stop func(), err error) {
	readers := make(chan struct{})
	var readersWG sync.WaitGroup
	stop = func() {
		var wg sync.WaitGroup
		for _, c := range members {
			wg.Go(func() { _ = c.Stop() })
		}
		wg.Wait()
		close(readers)
		readersWG.Wait()
	}
	key := make([]byte, 32)
	if _, err := crand.Read(key); err != nil {
		return nil, stop, fmt.Errorf("gossip key: %w", err)
	}
	for i := range n {
		c, err := cluster.New(cluster.Config{
			NodeName: fmt.Sprintf("m%04d", i), BindAddr: "127.0.0.1", BindPort: cluster.AnyPort, SecretKeys: [][]byte{key},
		})
		if err != nil {
			return members, stop, fmt.Errorf("start member %d of %d: %w", i+1, n, err)
		}
		members = append(members, c)
		readersWG.Go(func() { readEvents(c, readers) })
	}
	return members, stop, nil
}

// joinInWaves joins members to members[0] (in waves above
// membershipWave members) and returns the time from the first join until
// every member sees all alive, and from the first join of the last wave.
// Each wave that reached its full view is reported to stderr with its
// cost, and the largest is kept in *reached.
func joinInWaves(members []*cluster.Cluster, joined *atomic.Int64, reached *waveReached) (full, last time.Duration, err error) {
	n := len(members)
	limit := membershipJoinLimit + time.Duration(n)*joinLimitPerMember
	wave := n
	if n > membershipWave {
		wave = membershipWave
	}
	start := time.Now()
	upTo := atomic.Int64{}
	stopProgress := reportProgress(func() string {
		k := int(upTo.Load())
		return fmt.Sprintf("%s: %d of %d joined; of the first %d, %s", time.Since(start).Round(time.Second), joined.Load()+1, n, k, viewProgress(members[:k], k))
	})
	defer stopProgress()
	var waveStart time.Time
	for from := 1; from < n; from += wave {
		to := min(n, from+wave)
		upTo.Store(int64(to))
		waveStart = time.Now()
		cpu0, traffic0 := processCPU(), sumTraffic(members)
		if err := joinAll(members[:to], from, start.Add(limit), joined); err != nil {
			return 0, 0, err
		}
		if !pollUntil(start.Add(limit), func() bool { return allSee(members[:to], to) }) {
			return 0, 0, fmt.Errorf("no full view after %s: all %d of %d joined, %s",
				time.Since(start).Round(time.Millisecond), to, n, viewProgress(members[:to], to))
		}
		*reached = waveReached{members: to, fullView: time.Since(start)}
		if wave < n {
			fmt.Fprintf(os.Stderr, "  membership: %d members see all after %s (this wave of %d: %s, %.1f CPU s, %d datagrams received)\n",
				to, reached.fullView.Round(time.Millisecond), to-from, time.Since(waveStart).Round(time.Millisecond),
				(processCPU() - cpu0).Seconds(), sumTraffic(members).PacketsIn-traffic0.PacketsIn)
		}
	}
	return time.Since(start), time.Since(waveStart), nil
}

// waveReached is the largest group of members, the first ones, that
// reached a full view, and when (since the first join).
type waveReached struct {
	members  int
	fullView time.Duration
}

// sumTraffic adds up what the members' gossip sockets carried (counters
// only: it answers even when the members are swamped).
func sumTraffic(members []*cluster.Cluster) cluster.Traffic {
	var t cluster.Traffic
	for _, c := range members {
		m := c.GossipTraffic()
		t.PacketsIn += m.PacketsIn
		t.BytesIn += m.BytesIn
		t.StreamsIn += m.StreamsIn
	}
	return t
}

// readEvents drains c's events until stop is closed, as the agent does.
func readEvents(c *cluster.Cluster, stop <-chan struct{}) {
	for {
		select {
		case <-c.Events():
		case <-stop:
			return
		}
	}
}

// joinAll joins members[from:] to members[:from], at most
// membershipJoiners at a time, each through up to membershipSeeds members
// that have joined already, as agents list a few seeds: one seed for all
// would serve every join's full-state exchange alone. A join that fails is
// retried through other seeds after a backoff, as the agent retries, until
// deadline.
func joinAll(members []*cluster.Cluster, from int, deadline time.Time, count *atomic.Int64) error {
	var mu sync.Mutex
	var joined []string
	for _, c := range members[:from] {
		joined = append(joined, c.Addr().String())
	}
	seeds := func() []string {
		mu.Lock()
		defer mu.Unlock()
		var out []string
		for _, i := range rand.Perm(len(joined))[:min(membershipSeeds, len(joined))] {
			out = append(out, joined[i])
		}
		return out
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	var wg sync.WaitGroup
	sem := make(chan struct{}, membershipJoiners)
	var lastErr error
	failed := 0
	for _, c := range members[from:] {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			err := joinRetrying(ctx, c, seeds)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				lastErr = err
				return
			}
			joined = append(joined, c.Addr().String())
			count.Add(1)
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(joined) < len(members) {
		return fmt.Errorf("only %d of %d members joined by the deadline (%d gave up, %d never tried; last error: %w)",
			len(joined), len(members), failed, len(members)-len(joined)-failed, errors.Join(lastErr, ctx.Err()))
	}
	return nil
}

// joinRetrying joins c through seeds(), again with fresh seeds after
// 0.5 s, 1 s, 2 s … until ctx ends.
func joinRetrying(ctx context.Context, c *cluster.Cluster, seeds func() []string) error {
	backoff := 500 * time.Millisecond
	for {
		_, err := c.Join(ctx, seeds()...)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", c.Name(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 4*time.Second)
	}
}

// progressEvery is how often a long run says how far it got.
const progressEvery = 10 * time.Second

// reportProgress prints what status says to stderr every progressEvery
// until the returned function is called.
func reportProgress(status func() string) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				fmt.Fprintf(os.Stderr, "  membership: %s\n", status())
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// busyLimit bounds how long the harness waits for an answer from the
// members: a member whose memberlist is swamped (a lock held by hundreds
// of queued suspicion timers) may not answer NumAlive for minutes.
const busyLimit = 10 * time.Second

// viewProgress says how far members are from each seeing n alive.
func viewProgress(members []*cluster.Cluster, n int) string {
	res := make(chan string, 1)
	go func() {
		least, complete := n, 0
		for _, c := range members {
			k := c.NumAlive()
			least = min(least, k)
			if k == n {
				complete++
			}
		}
		res <- fmt.Sprintf("%d of %d members see all %d alive, the least informed sees %d", complete, len(members), n, least)
	}()
	select {
	case s := <-res:
		return s
	case <-time.After(busyLimit):
		return fmt.Sprintf("the view of the %d members is unknown: they did not all answer within %s (swamped)", len(members), busyLimit)
	}
}

func allSee(members []*cluster.Cluster, n int) bool {
	for _, c := range members {
		if c.NumAlive() != n {
			return false
		}
	}
	return true
}

// pollUntil checks cond every 10 ms until it holds or deadline passes; a
// check still running at the deadline counts as false (it is left to
// finish on its own).
func pollUntil(deadline time.Time, cond func() bool) bool {
	for {
		res := make(chan bool, 1)
		go func() { res <- cond() }()
		select {
		case ok := <-res:
			if ok {
				return true
			}
		case <-time.After(time.Until(deadline)):
			return false
		}
		if !time.Now().Before(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// processCPU is the CPU time (user and system) this process has used: on
// a shared machine, the cost of a run, which wall-clock times mix with the
// waits for the CPU.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// loadAverage is the first three fields of /proc/loadavg, "?" if unknown.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}
