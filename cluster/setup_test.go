package cluster

import (
	"context"
	"testing"
	"time"
)

// createNetwork creates a network through members[0] and waits until
// every member has accepted it: how most tests start.
func createNetwork(t testing.TB, members []*Cluster, name, subnet string) Network {
	t.Helper()
	n := mustCreate(t, members[0], name, subnet)
	waitNetwork(t, members, name, true)
	return n
}

// timeoutCtx is a context that ends after d, or when the test does.
func timeoutCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
