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
// path: emit appends to a queue of at most limit events, and one goroutine
// (run) passes them on, in order, through an unbuffered channel. When the
// queue is full the event is dropped, counted, and an EventResync is queued
// as soon as there is room again.
//
// The queue holds only the events not yet read, so a member whose agent
// keeps up holds almost none. A channel buffered to the limit would hold
// limit × sizeof(Event) (about 460 KB at 1,024) from the start, whatever is
// read: most of a member's memory in a 1,000-member cluster run in one
// process.
type eventQueue struct {
	ch    chan Event
	limit int
	stats *counters
	wake  chan struct{} // one token: the queue is not empty

	mu      sync.Mutex
	pending []Event // pending[head] may be in the middle of being sent
	head    int
	missed  bool
}

// keepEvents is the capacity an emptied queue keeps, so that a steady
// trickle of events does not allocate for each one.
const keepEvents = 16

func newEventQueue(limit int, stats *counters) *eventQueue {
	return &eventQueue{ch: make(chan Event), limit: max(limit, 1), stats: stats, wake: make(chan struct{}, 1)}
}

func (q *eventQueue) emit(ev Event) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.missed {
		if len(q.pending)-q.head >= q.limit {
			q.stats.eventsDropped.Add(1)
			return
		}
		q.push(Event{Type: EventResync})
		q.missed = false
	}
	if len(q.pending)-q.head >= q.limit {
		q.missed = true
		q.stats.eventsDropped.Add(1)
		return
	}
	q.push(ev)
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// push appends ev, first moving the waiting events to the front when the
// buffer is full, so the buffer never grows past twice the backlog.
func (q *eventQueue) push(ev Event) {
	if len(q.pending) == cap(q.pending) && q.head > 0 {
		n := copy(q.pending, q.pending[q.head:])
		clear(q.pending[n:])
		q.pending, q.head = q.pending[:n], 0
	}
	q.pending = append(q.pending, ev)
}

// run delivers the queued events until done is closed; what is still
// queued then is never delivered.
func (q *eventQueue) run(done <-chan struct{}) {
	for {
		q.mu.Lock()
		if q.head == len(q.pending) {
			// Empty: keep a small buffer, give the memory of a burst back.
			if cap(q.pending) > keepEvents {
				q.pending = nil
			}
			q.pending, q.head = q.pending[:0], 0
			q.mu.Unlock()
			select {
			case <-q.wake:
				continue
			case <-done:
				return
			}
		}
		ev := q.pending[q.head]
		q.mu.Unlock()
		select {
		case q.ch <- ev:
		case <-done:
			return
		}
		q.mu.Lock()
		q.pending[q.head] = Event{}
		q.head++
		q.mu.Unlock()
	}
}
