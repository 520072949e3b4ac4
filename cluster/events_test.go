package cluster

import (
	"net/netip"
	"runtime"
	"testing"
	"time"
)

// startQueue runs q until the test ends.
func startQueue(t *testing.T, q *eventQueue) {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() { defer close(stopped); q.run(done) }()
	t.Cleanup(func() { close(done); <-stopped })
}

func nextEvent(t *testing.T, q *eventQueue) Event {
	t.Helper()
	select {
	case ev := <-q.ch:
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
		return Event{}
	}
}

// A reader that falls more than the limit behind loses the newest events,
// then gets EventResync before anything newer; the rest keeps its order.
func TestEventQueueOverflowThenResync(t *testing.T) {
	var st counters
	q := newEventQueue(8, &st)
	startQueue(t, q)
	for i := range 12 {
		q.emit(Event{Type: EventEndpointAdded, Lease: prefixN(i)})
	}
	if got := st.eventsDropped.Load(); got != 4 {
		t.Fatalf("dropped %d events, want 4", got)
	}
	for i := range 8 {
		if ev := nextEvent(t, q); ev.Lease != prefixN(i) {
			t.Fatalf("event %d is %v, want %v", i, ev.Lease, prefixN(i))
		}
	}
	q.emit(Event{Type: EventEndpointRemoved})
	if ev := nextEvent(t, q); ev.Type != EventResync {
		t.Fatalf("after the overflow got %v, want resync", ev.Type)
	}
	if ev := nextEvent(t, q); ev.Type != EventEndpointRemoved {
		t.Fatalf("after the resync got %v, want endpoint-removed", ev.Type)
	}
	select {
	case ev := <-q.ch:
		t.Fatalf("unexpected %v", ev.Type)
	case <-time.After(50 * time.Millisecond):
	}
}

// The queue takes memory for the events waiting, not for its limit: a
// thousand members in one process each with the default limit must not
// hold a thousand full buffers.
func TestEventQueueMemoryFollowsBacklog(t *testing.T) {
	const queues = 200
	var st counters
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	qs := make([]*eventQueue, queues)
	for i := range qs {
		qs[i] = newEventQueue(1024, &st)
		startQueue(t, qs[i])
		qs[i].emit(Event{Type: EventMemberJoined})
	}
	for _, q := range qs {
		nextEvent(t, q)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perQueue := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / queues
	// An Event is about 450 bytes: a buffer for 1,024 of them would be
	// 450 KiB; a queue with nothing waiting holds a few hundred bytes.
	if perQueue > 16<<10 {
		t.Fatalf("%d bytes of heap per empty queue, want < 16 KiB", perQueue)
	}
	runtime.KeepAlive(qs)
}

// prefixN is a distinct /32 for each i, to tell events apart.
func prefixN(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 32)
}

// A reader that is always a little behind never lets the queue empty; the
// buffer must still stay the size of the backlog, not of every event ever
// queued.
func TestEventQueueBufferFollowsBacklogUnderSteadyLoad(t *testing.T) {
	var st counters
	q := newEventQueue(1024, &st)
	startQueue(t, q)
	q.emit(Event{Type: EventEndpointAdded}) // one always waiting
	for i := range 5000 {
		q.emit(Event{Type: EventEndpointAdded, Lease: prefixN(i)})
		q.emit(Event{Type: EventEndpointAdded, Lease: prefixN(i + 1)})
		for range 2 {
			nextEvent(t, q)
		}
		q.mu.Lock()
		c, backlog := cap(q.pending), len(q.pending)-q.head
		q.mu.Unlock()
		if c > 4*max(backlog, keepEvents) {
			t.Fatalf("after %d events the buffer holds %d for a backlog of %d", 2*(i+1), c, backlog)
		}
	}
	if d := st.eventsDropped.Load(); d != 0 {
		t.Fatalf("%d events dropped", d)
	}
}
