package cluster

import (
	"context"
	"slices"
	"time"

	"github.com/hashicorp/memberlist"
)

// Requests go to each target over memberlist's reliable (TCP) user
// messages; each answers with its own reliable message, which arrives
// through NotifyMsg and is matched by request ID.

// call sends q to every target and waits for their answers until
// RequestTimeout, ctx or Close. It returns the answers and the names of the
// targets that did not answer.
func (c *Cluster) call(ctx context.Context, targets []memberlist.Node, q request) ([]response, []string) {
	if len(targets) == 0 {
		return nil, nil
	}
	q.ID = newRequestID()
	q.From = c.cfg.NodeName
	ch := make(chan response, len(targets))
	c.rpcMu.Lock()
	c.rpcs[q.ID] = ch
	c.rpcMu.Unlock()
	defer func() {
		c.rpcMu.Lock()
		delete(c.rpcs, q.ID)
		c.rpcMu.Unlock()
	}()

	msg := c.sign(encodeMessage(message{Type: msgRequest, Request: &q}))
	want := make(map[string]bool, len(targets))
	for _, t := range targets {
		want[t.Name] = true
		c.send(ctx, t, msg)
	}
	timer := time.NewTimer(c.cfg.RequestTimeout)
	defer timer.Stop()
	got := make(map[string]response, len(targets))
wait:
	for len(got) < len(want) {
		select {
		case r := <-ch:
			if want[r.From] {
				got[r.From] = r
			}
		case <-timer.C:
			break wait
		case <-ctx.Done():
			break wait
		case <-c.done:
			break wait
		}
	}
	resps := make([]response, 0, len(got))
	var missing []string
	for name := range want {
		if r, ok := got[name]; ok {
			resps = append(resps, r)
		} else {
			missing = append(missing, name)
		}
	}
	slices.Sort(missing)
	return resps, missing
}

// notify sends q to every target without waiting for answers.
func (c *Cluster) notify(targets []memberlist.Node, q request) {
	q.ID = newRequestID()
	q.From = c.cfg.NodeName
	msg := c.sign(encodeMessage(message{Type: msgRequest, Request: &q}))
	for _, t := range targets {
		c.trySend(t, msg)
	}
}

// deliver hands a response to the call waiting for it, if any.
func (c *Cluster) deliver(r response) {
	c.rpcMu.Lock()
	ch := c.rpcs[r.ID]
	c.rpcMu.Unlock()
	if ch == nil {
		return // the call has given up
	}
	select {
	case ch <- r:
	default:
		c.stats.drop(dropQueueFull)
	}
}

// send delivers msg to one node from its own goroutine, at most
// cap(sendSem) at a time, waiting for a slot until ctx or Close.
func (c *Cluster) send(ctx context.Context, to memberlist.Node, msg []byte) {
	select {
	case c.sendSem <- struct{}{}:
		c.spawnSend(to, msg)
	case <-ctx.Done():
	case <-c.done:
	}
}

// trySend is send for the gossip path (replies, notifications): it hands
// msg to the reply workers and never waits; with their queue full the
// message is dropped and counted.
func (c *Cluster) trySend(to memberlist.Node, msg []byte) {
	select {
	case c.outbox <- &outMsg{to: to, msg: msg}:
		c.startSender()
	default:
		c.stats.drop(dropQueueFull)
	}
}

// outboxSize is how many replies may wait for a reply worker.
const outboxSize = 1024

type outMsg struct {
	to  memberlist.Node
	msg []byte
}

// replyWorkers is how many goroutines may send replies at once; a send to
// a dead node holds one for up to TCPTimeout. They run only while there is
// something to send: idle, a member keeps none (each would hold a stack,
// which in a cluster of a thousand members run in one process was most of
// an idle member's memory).
const replyWorkers = 8

// reserveSender counts one more reply worker unless replyWorkers are
// running (then those will see what was queued).
func (c *Cluster) reserveSender() bool {
	for {
		n := c.senders.Load()
		if n >= replyWorkers {
			return false
		}
		if c.senders.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// startSender starts a reply worker unless replyWorkers are running.
func (c *Cluster) startSender() {
	if !c.reserveSender() {
		return
	}
	if !c.enter() {
		c.senders.Add(-1)
		return
	}
	go c.sendReplies()
}

// sendReplies is one reply worker; it runs until the outbox is empty or
// Close.
func (c *Cluster) sendReplies() {
	defer c.wg.Done()
	for {
		select {
		case m := <-c.outbox:
			c.deliverOne(m.to, m.msg)
			continue
		case <-c.done:
			c.senders.Add(-1)
			return
		default:
		}
		c.senders.Add(-1)
		// A reply queued between the empty outbox and the line above saw
		// this worker still counted and started none: take it.
		if len(c.outbox) == 0 || !c.reserveSender() {
			return
		}
	}
}

func (c *Cluster) deliverOne(to memberlist.Node, msg []byte) {
	ml := c.mlRef.Load()
	if ml == nil {
		return
	}
	if err := ml.SendReliable(&to, msg); err != nil {
		c.stats.sendErrors.Add(1)
		c.log.Debug("send failed", "to", to.Name, "err", err)
		return
	}
	c.stats.sent.Add(1)
}

// spawnSend sends from a goroutine that owns a sendSem slot.
func (c *Cluster) spawnSend(to memberlist.Node, msg []byte) {
	ml := c.mlRef.Load()
	if ml == nil || !c.enter() {
		<-c.sendSem
		return
	}
	go func() {
		defer c.wg.Done()
		defer func() { <-c.sendSem }()
		c.deliverOne(to, msg)
	}()
}
