package cluster

import (
	"fmt"
	"net/netip"
	"sync"
)

// EventType says what changed.
type EventType int

const (
	EventMemberJoined  EventType = iota + 1
	EventMemberLeft              // left gracefully
	EventMemberFailed            // declared dead by failure detection
	EventMemberUpdated           // metadata changed
	EventNetworkAdded
	EventNetworkRemoved
	// EventNetworkConflict: a network created on this node lost to a
	// clashing create elsewhere and was removed. Conflict says why.
	EventNetworkConflict
	EventEndpointAdded
	EventEndpointUpdated
	EventEndpointRemoved
	// EventLeaseLost: a block or static address of this node was taken
	// away (reclaimed while the node was gone, or lost after a partition).
	EventLeaseLost
	// EventResync: events were dropped because the consumer was slow; read
	// the full state again (Members, Networks, Endpoints).
	EventResync
)

var eventNames = map[EventType]string{
	EventMemberJoined: "member-joined", EventMemberLeft: "member-left", EventMemberFailed: "member-failed",
	EventMemberUpdated: "member-updated", EventNetworkAdded: "network-added", EventNetworkRemoved: "network-removed",
	EventNetworkConflict: "network-conflict", EventEndpointAdded: "endpoint-added", EventEndpointUpdated: "endpoint-updated",
	EventEndpointRemoved: "endpoint-removed", EventLeaseLost: "lease-lost", EventResync: "resync",
}

func (t EventType) String() string {
	if s, ok := eventNames[t]; ok {
		return s
	}
	return fmt.Sprintf("event(%d)", int(t))
}

// Event is one change. Only the fields that belong to its type are set.
type Event struct {
	Type     EventType
	Member   Member
	Network  Network
	Endpoint Endpoint
	// Conflict, for EventNetworkConflict: the network that won and why.
	Conflict *NetworkConflict
	// Lease, for EventLeaseLost: the block (or the address as a /32).
	Lease netip.Prefix
}

// NetworkConflict tells the loser of a conflicting create what won.
type NetworkConflict struct {
	Lost   Network
	Winner NetworkID
	Reason string
}

func (c *NetworkConflict) Error() string {
	return fmt.Sprintf("network %q (%s) lost to the earlier create %s: %s", c.Lost.Name, c.Lost.Subnet, c.Winner, c.Reason)
}

// eventQueue hands events to the agent without ever blocking the gossip
// path: a buffered channel, and when it is full the event is dropped, counted,
// and an EventResync is delivered as soon as there is room again.
type eventQueue struct {
	ch    chan Event
	stats *counters

	mu     sync.Mutex
	missed bool
}

func newEventQueue(size int, stats *counters) *eventQueue {
	return &eventQueue{ch: make(chan Event, size), stats: stats}
}

func (q *eventQueue) emit(ev Event) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.missed {
		select {
		case q.ch <- Event{Type: EventResync}:
			q.missed = false
		default:
			q.stats.eventsDropped.Add(1)
			return
		}
	}
	select {
	case q.ch <- ev:
	default:
		q.missed = true
		q.stats.eventsDropped.Add(1)
	}
}
