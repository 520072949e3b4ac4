package cluster

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// The delegates are thin: they copy what memberlist hands them and pass it
// to the Cluster. None of them blocks: the state lock is only ever held for
// in-memory work, events go to a non-blocking queue, and replies are sent
// from their own goroutines.

type delegate struct{ c *Cluster }

var _ memberlist.Delegate = (*delegate)(nil)

func (d *delegate) NodeMeta(limit int) []byte {
	b := *d.c.meta.Load()
	if len(b) > limit {
		return nil // cannot happen: encodeMeta enforces the 512-byte limit
	}
	return b
}

func (d *delegate) NotifyMsg(b []byte) { d.c.handleMessage(slices.Clone(b)) }

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.c.queue.GetBroadcasts(overhead, limit)
}

func (d *delegate) LocalState(join bool) []byte { return d.c.localState() }

func (d *delegate) MergeRemoteState(b []byte, join bool) { d.c.mergeRemoteState(slices.Clone(b)) }

// eventDelegate is called with memberlist's node lock held: it touches only
// the members map and the event queue.
type eventDelegate struct{ c *Cluster }

var _ memberlist.EventDelegate = (*eventDelegate)(nil)

func (d *eventDelegate) NotifyJoin(n *memberlist.Node)   { d.c.memberChanged(*n, EventMemberJoined) }
func (d *eventDelegate) NotifyUpdate(n *memberlist.Node) { d.c.memberChanged(*n, EventMemberUpdated) }

// NotifyLeave cannot tell a leave from a failure (memberlist does not
// update Node.State before calling it): the leave intent that a leaving
// node broadcasts first makes the difference.
func (d *eventDelegate) NotifyLeave(n *memberlist.Node) {
	d.c.memMu.Lock()
	_, leaving := d.c.leaving[n.Name]
	d.c.memMu.Unlock()
	if leaving {
		d.c.memberChanged(*n, EventMemberLeft)
		return
	}
	d.c.memberChanged(*n, EventMemberFailed)
}

// aliveDelegate refuses members whose metadata does not decode, so the
// rest of the package only ever sees valid metadata.
type aliveDelegate struct{ c *Cluster }

var _ memberlist.AliveDelegate = (*aliveDelegate)(nil)

func (d *aliveDelegate) NotifyAlive(n *memberlist.Node) error {
	// memberlist asks about every alive message and every member of every
	// full-state exchange, almost always about a member it knows with the
	// metadata it has: that was decoded and checked when first accepted.
	if n.Name != d.c.cfg.NodeName {
		d.c.memMu.Lock()
		prev := d.c.members[n.Name]
		known := prev != nil && prev.State == MemberAlive && bytes.Equal(prev.rawMeta, n.Meta)
		d.c.memMu.Unlock()
		if known {
			return nil
		}
	}
	m, err := decodeMeta(n.Meta)
	if err == nil && m.Name != n.Name {
		err = &decodeError{reason: dropInvalid, msg: fmt.Sprintf("metadata names %q", m.Name)}
	}
	if err != nil {
		d.c.stats.drop(dropBadMeta)
		return fmt.Errorf("member %q: bad metadata: %w", n.Name, err)
	}
	if m.Identity == ([32]byte{}) {
		d.c.stats.drop(dropBadMeta)
		return fmt.Errorf("member %q: no identity key", n.Name)
	}
	// A name is bound to its key while the member lives (identity.go).
	d.c.memMu.Lock()
	prev := d.c.members[n.Name]
	taken := prev != nil && prev.State == MemberAlive && prev.Meta.Identity != m.Identity
	d.c.memMu.Unlock()
	if n.Name == d.c.cfg.NodeName {
		taken = m.Identity != d.c.identityKey()
	}
	if taken {
		d.c.stats.drop(dropIdentity)
		return fmt.Errorf("member %q: identity key differs from the one of the live member of that name", n.Name)
	}
	return nil
}

func (c *Cluster) memberChanged(n memberlist.Node, ev EventType) {
	meta, _ := decodeMeta(n.Meta) // validated by aliveDelegate
	ip, _ := netip.AddrFromSlice(n.Addr)
	m := Member{Name: n.Name, Addr: netip.AddrPortFrom(ip.Unmap(), n.Port), Meta: meta, State: MemberAlive, Since: time.Now(), rawMeta: n.Meta}
	switch ev {
	case EventMemberLeft:
		m.State = MemberLeft
	case EventMemberFailed:
		m.State = MemberFailed
	}
	c.memMu.Lock()
	if prev := c.members[n.Name]; prev != nil && prev.State == m.State {
		m.Since = prev.Since
	}
	c.members[n.Name] = &m
	c.clearSuspectLocked(n.Name)
	if ev == EventMemberJoined {
		delete(c.leaving, n.Name)
	}
	c.memMu.Unlock()
	if n.Name == c.cfg.NodeName {
		return
	}
	if ev == EventMemberJoined {
		c.joinedOnce.Store(true)
	}
	c.log.Debug("member changed", "member", n.Name, "event", ev)
	c.events.emit(Event{Type: ev, Member: m})
}

// broadcast is one queued gossip message; a newer one about the same key
// replaces it in the queue.
type broadcast struct {
	key string
	msg []byte
}

var _ memberlist.Broadcast = (*broadcast)(nil)

func (b *broadcast) Invalidates(o memberlist.Broadcast) bool {
	ob, ok := o.(*broadcast)
	return ok && ob.key == b.key
}
func (b *broadcast) Message() []byte { return b.msg }
func (b *broadcast) Finished()       {}

// broadcast queues records for gossip. A record too large for a packet is
// left to push/pull.
func (c *Cluster) broadcast(rs []record) {
	for _, r := range rs {
		msg := encodeMessage(message{Type: msgRecord, Record: &r})
		if len(msg) > maxBroadcastBytes {
			c.log.Warn("record too large to gossip; it spreads by push/pull only", "key", r.key(), "bytes", len(msg))
			continue
		}
		c.queue.QueueBroadcast(&broadcast{key: r.key(), msg: msg})
		c.stats.sent.Add(1)
	}
}

func (c *Cluster) localState() []byte {
	c.mu.Lock()
	st := stateMsg{Clock: c.st.clock, Records: c.st.records()}
	c.mu.Unlock()
	b := encodeMessage(message{Type: msgState, State: &st})
	if len(b) > maxStateBytes {
		c.log.Error("state too large for push/pull", "bytes", len(b), "limit", maxStateBytes)
		c.stats.drop(dropOversized)
		return nil
	}
	return b
}

func (c *Cluster) mergeRemoteState(b []byte) {
	if len(b) == 0 {
		return // a peer without state (or a memberlist without delegate)
	}
	c.stats.received.Add(1)
	m, err := decodeMessage(b)
	if err == nil && m.Type != msgState {
		err = &decodeError{reason: dropUnknownType, msg: fmt.Sprintf("message type %d in push/pull", m.Type)}
	}
	if err != nil {
		c.stats.drop(dropReason(err))
		c.log.Warn("dropped remote state", "err", err)
		return
	}
	c.applyRemote(m.State.Clock, m.State.Records, false)
	c.stats.lastSync.Store(time.Now().UnixNano())
}

// handleMessage handles one gossip or direct message.
func (c *Cluster) handleMessage(b []byte) {
	c.stats.received.Add(1)
	m, err := decodeMessage(b)
	if err != nil {
		c.stats.drop(dropReason(err))
		c.log.Debug("dropped message", "err", err, "bytes", len(b))
		return
	}
	switch m.Type {
	case msgRecord:
		c.applyRemote(0, []record{*m.Record}, true)
	case msgRequest:
		from, why := c.verify(m.Request.From, m, false)
		if why != "" {
			c.stats.drop(why)
			c.log.Debug("dropped request", "from", m.Request.From, "reason", why)
			return
		}
		c.handleRequest(m.Request, from)
	case msgLeave:
		// A leave is relayed by others; only the leaving node signs it.
		if _, why := c.verify(m.Leave.Node, m, true); why != "" {
			c.stats.drop(why)
			return
		}
		c.leaveIntent(*m.Leave, b)
	case msgResponse:
		if _, why := c.verify(m.Response.From, m, false); why != "" {
			c.stats.drop(why)
			return
		}
		if len(m.Response.Records) > 0 {
			c.applyRemote(0, m.Response.Records, true)
		}
		c.deliver(*m.Response)
	default:
		c.stats.drop(dropUnknownType)
	}
}

// handleRequest answers a verified request from the member to.
func (c *Cluster) handleRequest(q *request, to memberlist.Node) {
	resp := response{ID: q.ID, From: c.cfg.NodeName, OK: true}
	switch q.Op {
	case opClaim:
		_ = c.locked(func(s *state) error {
			resp.OK, resp.Reason = s.vote(q.Res, q.From, 3*c.cfg.RequestTimeout)
			return nil
		})
	case opAbort:
		_ = c.locked(func(s *state) error { s.releasePromise(q.Res, q.From); return nil })
		return
	case opPropose:
		if q.Net.Net.ID.Node != q.From {
			c.stats.drop(dropForeign) // a member proposes only its own creates
			return
		}
		auth := c.authRecord(record{net: q.Net})
		_ = c.locked(func(s *state) error {
			resp.OK, resp.Reason, resp.Records = s.proposal(q.Net, auth)
			return nil
		})
	case opKeyInstall, opKeyUse, opKeyRemove:
		if err := c.applyKeyOp(q.Op, q.Key); err != nil {
			resp.OK, resp.Reason = false, err.Error()
		}
	}
	if len(resp.Reason) > maxReason {
		resp.Reason = strings.ToValidUTF8(resp.Reason[:maxReason], "")
	}
	c.trySend(to, c.sign(encodeMessage(message{Type: msgResponse, Response: &resp})))
}

// leaveSeen is a leave intent this node has seen.
type leaveSeen struct {
	stamp uint64
	at    time.Time
}

// leaveMemory is how long a leave intent is remembered: long enough to
// tell a leave from a failure when memberlist reports it (seconds), short
// enough that the map stays small whatever is sent.
const leaveMemory = 10 * time.Minute

// leaveIntent records that a node is leaving and passes the news (raw, as
// signed by the leaving node) on once. If it arrives after the node was
// already declared failed, the member is reported as left after all.
func (c *Cluster) leaveIntent(li leaveIntent, raw []byte) {
	if li.Node == c.cfg.NodeName {
		return
	}
	c.memMu.Lock()
	if c.leaving[li.Node].stamp == li.Stamp {
		c.memMu.Unlock()
		return
	}
	c.leaving[li.Node] = leaveSeen{stamp: li.Stamp, at: time.Now()}
	var left *Member
	if m := c.members[li.Node]; m != nil && m.State == MemberFailed {
		m.State = MemberLeft
		cp := *m
		left = &cp
	}
	c.memMu.Unlock()
	if left != nil {
		c.events.emit(Event{Type: EventMemberLeft, Member: *left})
	}
	c.queue.QueueBroadcast(&broadcast{key: "leave/" + li.Node, msg: slices.Clone(raw)})
}
