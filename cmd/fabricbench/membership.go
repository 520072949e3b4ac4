package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"time"

	"github.com/fabricnet/fabric/cluster"
)

// convergence is one in-process membership run.
type convergence struct {
	fullView     time.Duration // first join until every member sees all n alive
	failureSeen  time.Duration // crash of one member until every other dropped it
	memPerMember float64       // Go heap and stacks in use per member at full view, bytes
	goroutines   float64       // goroutines per member at full view
}

// measureConvergence starts n gossip members on 127.0.0.1 in this process
// (the cluster package's own LAN timing, no encryption), joins them all at
// once through the first, and measures the full view, then crashes one
// member (no leave) and measures until every other member has declared it
// dead. Everything it starts is stopped before it returns. The members
// share the machine's CPUs, so large n on few cores measures the
// scheduler too.
func measureConvergence(n int) (conv convergence, err error) {
	if n < 3 {
		return conv, fmt.Errorf("need at least 3 members, got %d", n)
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	g0 := runtime.NumGoroutine()
	members := make([]*cluster.Cluster, 0, n)
	defer func() {
		var wg sync.WaitGroup
		for _, c := range members {
			wg.Go(func() { _ = c.Stop() })
		}
		wg.Wait()
	}()
	for i := range n {
		c, err := cluster.New(cluster.Config{NodeName: fmt.Sprintf("m%04d", i), BindAddr: "127.0.0.1", BindPort: cluster.AnyPort})
		if err != nil {
			return conv, fmt.Errorf("start member %d: %w", i, err)
		}
		members = append(members, c)
	}
	start := time.Now()
	if err := joinAll(members, start.Add(60*time.Second)); err != nil {
		return conv, err
	}
	if pollFor(context.Background(), time.Until(start.Add(60*time.Second)), 10*time.Millisecond, func() bool { return allSee(members, n) }) != nil {
		return conv, fmt.Errorf("no full view of %d members after %s", n, time.Since(start).Round(time.Millisecond))
	}
	conv.fullView = time.Since(start)
	var at runtime.MemStats
	runtime.ReadMemStats(&at)
	conv.memPerMember = (float64(at.HeapInuse+at.StackInuse) - float64(before.HeapInuse+before.StackInuse)) / float64(n)
	conv.goroutines = float64(runtime.NumGoroutine()-g0) / float64(n)

	victim := members[n-1]
	members = members[:n-1]
	_ = victim.Stop()
	start = time.Now()
	if pollFor(context.Background(), 60*time.Second, 10*time.Millisecond, func() bool { return allSee(members, n-1) }) != nil {
		return conv, fmt.Errorf("failure of %s not seen by all after %s", victim.Name(), time.Since(start).Round(time.Millisecond))
	}
	conv.failureSeen = time.Since(start)
	return conv, nil
}

func allSee(members []*cluster.Cluster, n int) bool {
	for _, c := range members {
		if c.NumAlive() != n {
			return false
		}
	}
	return true
}

// joinAll joins members[1:] to the cluster of members[0], at most 16 at
// a time, each through up to three members that have joined already, as
// a real deployment lists a few seeds: one seed for all would serve every
// join's full-state exchange alone. Joins still running at deadline fail.
func joinAll(members []*cluster.Cluster, deadline time.Time) error {
	var joinedMu sync.Mutex
	joined := []string{members[0].Addr().String()}
	seeds := func() []string {
		joinedMu.Lock()
		defer joinedMu.Unlock()
		var out []string
		for _, i := range rand.Perm(len(joined))[:min(3, len(joined))] {
			out = append(out, joined[i])
		}
		return out
	}
	// Bounded: Join retries until its context ends.
	joinCtx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	errs := make(chan error, len(members))
	for _, c := range members[1:] {
		if joinCtx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if _, err := c.Join(joinCtx, seeds()...); err != nil {
				errs <- err
				return
			}
			joinedMu.Lock()
			joined = append(joined, c.Addr().String())
			joinedMu.Unlock()
		})
	}
	wg.Wait()
	close(errs)
	var joinErrs []error
	for err := range errs {
		joinErrs = append(joinErrs, err)
	}
	if err := errors.Join(joinErrs...); err != nil {
		return fmt.Errorf("join: %w", err)
	}
	return nil
}
