package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// MeasureConvergence starts n members on 127.0.0.1 in this process, joins
// them all at once through the first, and measures
//   - fullView: from the first join until every member sees all n alive;
//   - failureSeen: from crashing one member (no graceful leave) until every
//     other member has declared it dead.
//
// It uses the package's own LAN timing and no encryption. Everything it
// starts is closed before it returns. The members share the machine's CPUs,
// so large n on few cores measures the scheduler too.
func MeasureConvergence(n int) (fullView, failureSeen time.Duration, err error) {
	if n < 3 {
		return 0, 0, fmt.Errorf("%w: need at least 3 members, got %d", ErrInvalid, n)
	}
	members := make([]*Cluster, 0, n)
	defer func() {
		var wg sync.WaitGroup
		for _, c := range members {
			wg.Add(1)
			go func() { defer wg.Done(); _ = c.shutdown(false) }()
		}
		wg.Wait()
	}()
	for i := range n {
		c, err := New(Config{NodeName: fmt.Sprintf("m%03d", i), BindAddr: "127.0.0.1", BindPort: AnyPort})
		if err != nil {
			return 0, 0, fmt.Errorf("start member %d: %w", i, err)
		}
		members = append(members, c)
	}
	seed := members[0].Addr().String()
	start := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	errs := make(chan error, n)
	for _, c := range members[1:] {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := c.Join(context.Background(), seed); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := errors.Join(collect(errs)...); err != nil {
		return 0, 0, fmt.Errorf("join: %w", err)
	}
	deadline := start.Add(60 * time.Second)
	if !pollUntil(deadline, func() bool { return allSee(members, n) }) {
		return 0, 0, fmt.Errorf("no full view of %d members after %s", n, time.Since(start).Round(time.Millisecond))
	}
	fullView = time.Since(start)

	victim := members[n-1]
	members = members[:n-1]
	_ = victim.shutdown(false)
	start = time.Now()
	if !pollUntil(start.Add(60*time.Second), func() bool { return allSee(members, n-1) }) {
		return fullView, 0, fmt.Errorf("failure of %s not seen by all after %s", victim.Name(), time.Since(start).Round(time.Millisecond))
	}
	return fullView, time.Since(start), nil
}

func collect(ch <-chan error) []error {
	var out []error
	for err := range ch {
		out = append(out, err)
	}
	return out
}

func allSee(members []*Cluster, n int) bool {
	for _, c := range members {
		if c.NumAlive() != n {
			return false
		}
	}
	return true
}

func pollUntil(deadline time.Time, cond func() bool) bool {
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return cond()
}
