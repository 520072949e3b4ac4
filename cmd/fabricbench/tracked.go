package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// tracked is the set of sandboxes one agent made for the benchmark and
// still holds: cleanup removes them through its API.
type tracked struct {
	mu    sync.Mutex
	names map[string]bool
}

func (t *tracked) add(name string) {
	if name == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.names == nil {
		t.names = map[string]bool{}
	}
	t.names[name] = true
}

func (t *tracked) remove(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.names, name)
}

// removeAll removes the sandboxes through client, bounded to 30 s in all
// and stopping early if the agent exits; what is left goes with the
// namespaces in the generic cleanup. where names the agent in messages.
func (t *tracked) removeAll(client *api.Client, agent *proc, where string) {
	t.mu.Lock()
	names := make([]string, 0, len(t.names))
	for n := range t.names {
		names = append(names, n)
	}
	t.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range names {
		if time.Now().After(deadline) {
			return
		}
		select {
		case <-agent.done:
			return
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := client.RemoveSandbox(ctx, n)
		cancel()
		var apiErr *api.Error
		if err != nil && !(errors.As(err, &apiErr) && apiErr.Code == api.CodeNotFound) {
			fmt.Fprintf(os.Stderr, "fabricbench: cleanup: remove sandbox %s%s: %v\n", n, where, err)
			continue
		}
		t.remove(n)
	}
}
