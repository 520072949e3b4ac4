package cluster

import (
	"sync"
	"sync/atomic"
	"time"
)

// Stats are the package's counters, for the agent's metrics.
type Stats struct {
	MessagesSent     uint64            // gossip broadcasts queued and direct messages sent
	MessagesReceived uint64            // messages that decoded and were handled
	SendErrors       uint64            // direct messages that could not be delivered
	Dropped          map[string]uint64 // messages not applied, by reason
	EventsDropped    uint64            // events lost because the consumer was slow
	StateVersion     uint64            // bumped on every change to the replicated state
	// HealthScore is memberlist's awareness score: 0 is healthy; higher
	// means this node answers probes late (it is likely the faulty one).
	HealthScore int
	// LastFullSync is when a peer's full state (push/pull) was last merged;
	// zero if never.
	LastFullSync time.Time
	// Suspect counts the members memberlist suspects right now (they count
	// as alive in Members until declared failed).
	Suspect int
	// Leases is the number of address blocks this node holds.
	Leases int
}

type counters struct {
	sent, received, sendErrors, eventsDropped atomic.Uint64
	lastSync                                  atomic.Int64 // unix nanoseconds

	mu      sync.Mutex
	dropped map[string]uint64
}

func (c *counters) drop(reason string) {
	c.mu.Lock()
	if c.dropped == nil {
		c.dropped = make(map[string]uint64)
	}
	c.dropped[reason]++
	c.mu.Unlock()
}

func (c *counters) snapshot() Stats {
	s := Stats{
		MessagesSent:     c.sent.Load(),
		MessagesReceived: c.received.Load(),
		SendErrors:       c.sendErrors.Load(),
		EventsDropped:    c.eventsDropped.Load(),
		Dropped:          make(map[string]uint64),
	}
	if ns := c.lastSync.Load(); ns != 0 {
		s.LastFullSync = time.Unix(0, ns)
	}
	c.mu.Lock()
	for k, v := range c.dropped {
		s.Dropped[k] = v
	}
	c.mu.Unlock()
	return s
}
