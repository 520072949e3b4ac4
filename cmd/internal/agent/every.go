package agent

import (
	"context"
	"time"
)

// every calls f every interval, first after one interval, until ctx ends:
// the loop of the agent's periodic checks.
func every(ctx context.Context, interval time.Duration, f func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}
