package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// Join contacts seeds (host:port) once and merges state with them. An
// error wrapping ErrKeyMismatch means the keys differ.
func (c *Cluster) Join(ctx context.Context, seeds ...string) (int, error) {
	seeds = c.notSelf(seeds)
	if len(seeds) == 0 {
		return 0, fmt.Errorf("%w: no seed to join other than this node", ErrInvalid)
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.ml.Join(seeds)
	if err != nil {
		if keyMismatch(err) {
			return n, fmt.Errorf("%w: cannot join %v: the seeds use other gossip keys (or none, or this node has none); every node needs a key in common (--cluster-secret-file): %w",
				ErrKeyMismatch, seeds, err)
		}
		return n, fmt.Errorf("join %v: %w", seeds, err)
	}
	c.scheduleResync(seeds)
	return n, nil
}

// resyncDelay is how long after a join this node exchanges full state once
// more, with a random member other than the seeds.
const resyncDelay = time.Second

// scheduleResync exchanges full state (memberlist's push/pull) with one
// random member resyncDelay (±25%) after a join. A seed only knows the
// members that joined before this node did; when many nodes start at once
// (a cluster's cold start) the early joiners would otherwise learn about
// the later ones only through gossip, which takes seconds at a few hundred
// members and much longer for a record whose broadcasts were lost, until
// the next periodic push/pull. One more exchange, by then with a member
// that knows most of the cluster, closes that gap at the cost of one TCP
// exchange per join.
func (c *Cluster) scheduleResync(seeds []string) {
	if !c.enter() {
		return
	}
	delay := resyncDelay*3/4 + time.Duration(c.randN(int(resyncDelay/2)+1))
	go func() {
		defer c.wg.Done()
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		skip := make(map[string]bool, len(seeds))
		for _, s := range seeds {
			skip[s] = true
		}
		var cands []string
		for _, n := range c.peers() {
			if a := net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))); !skip[a] {
				cands = append(cands, a)
			}
		}
		if len(cands) == 0 {
			return
		}
		peer := cands[c.randN(len(cands))]
		if _, err := c.ml.Join([]string{peer}); err != nil {
			c.log.Debug("state re-sync after join failed", "peer", peer, "err", err)
		}
	}()
}

// notSelf drops this node's own address from a seed list: a node given the
// same seed list as every other would otherwise "join" itself.
func (c *Cluster) notSelf(seeds []string) []string {
	out := make([]string, 0, len(seeds))
	for _, s := range seeds {
		host, port, err := net.SplitHostPort(s)
		if err == nil && port == strconv.Itoa(int(c.addr.Port())) {
			if ip, err := netip.ParseAddr(host); err == nil && ip.Unmap() == c.addr.Addr() {
				continue
			}
		}
		out = append(out, s)
	}
	return out
}

// Run keeps the node joined and the state tidy until ctx is done or Close
// is called: it joins the seeds (retrying with backoff, and again whenever
// this node is alone), asks failed members to rejoin, reaps the records of
// nodes gone for good and forgets old tombstones.
func (c *Cluster) Run(ctx context.Context) error {
	if !c.enter() {
		return ErrClosed
	}
	defer c.wg.Done()
	tick := time.NewTicker(c.maintenanceInterval())
	defer tick.Stop()
	backoff := c.cfg.JoinBackoffMin
	var nextJoin, nextReconnect time.Time
	for {
		now := time.Now()
		if len(c.cfg.Join) > 0 && c.ml.NumMembers() <= 1 && !now.Before(nextJoin) {
			if n, err := c.Join(ctx, c.cfg.Join...); err != nil {
				level := slog.LevelWarn
				if errors.Is(err, ErrKeyMismatch) {
					level = slog.LevelError
				}
				c.log.Log(ctx, level, "join failed, retrying", "seeds", c.cfg.Join, "in", backoff, "err", err)
				c.joinErr.Store(&err)
				nextJoin = now.Add(backoff/2 + time.Duration(c.randN(int(backoff/2)+1)))
				backoff = min(backoff*2, c.cfg.JoinBackoffMax)
			} else {
				c.log.Info("joined cluster", "seeds_reached", n, "members", c.ml.NumMembers())
				c.joinErr.Store(nil)
				backoff = c.cfg.JoinBackoffMin
			}
		}
		if !now.Before(nextReconnect) {
			nextReconnect = now.Add(c.cfg.ReconnectInterval)
			c.reconnect()
		}
		c.maintain()
		select {
		case <-ctx.Done():
			return nil
		case <-c.done:
			return nil
		case <-tick.C:
		}
	}
}

func (c *Cluster) maintenanceInterval() time.Duration {
	d := min(time.Second, c.cfg.ReapEndpointsAfter/4, c.cfg.ReclaimLeasesAfter/4)
	return max(d, 50*time.Millisecond)
}

// reconnect asks one failed member to rejoin. memberlist gossips to dead
// members only briefly; after a long partition the halves would otherwise
// stay apart.
func (c *Cluster) reconnect() {
	var failed []string
	c.memMu.Lock()
	for _, m := range c.members {
		if m.State == MemberFailed {
			failed = append(failed, m.Addr.String())
		}
	}
	c.memMu.Unlock()
	if len(failed) == 0 {
		return
	}
	addr := failed[c.randN(len(failed))]
	if _, err := c.ml.Join([]string{addr}); err != nil {
		c.log.Debug("reconnect to failed member", "addr", addr, "err", err)
	}
}

// maintain runs the periodic bookkeeping of the state.
func (c *Cluster) maintain() {
	alive := func(name string) bool {
		c.memMu.Lock()
		defer c.memMu.Unlock()
		m := c.members[name]
		return m != nil && m.State == MemberAlive
	}
	mayReap := len(c.cfg.Join) == 0 || c.joinedOnce.Load()
	_ = c.locked(func(s *state) error {
		s.observeMembers(alive)
		if mayReap {
			s.reap(c.cfg.ReapEndpointsAfter, c.cfg.ReclaimLeasesAfter)
		}
		s.gc(c.cfg.TombstoneTTL)
		now := s.now()
		for k, p := range s.promises {
			if !now.Before(p.expires) {
				delete(s.promises, k)
			}
		}
		return nil
	})
	// Forget members gone for longer than anything of theirs is kept.
	forget := max(c.cfg.ReapEndpointsAfter, c.cfg.ReclaimLeasesAfter)
	c.memMu.Lock()
	for name, m := range c.members {
		if m.State != MemberAlive && time.Since(m.Since) > forget {
			delete(c.members, name)
		}
	}
	for name, l := range c.leaving {
		if time.Since(l.at) > leaveMemory {
			delete(c.leaving, name)
		}
	}
	c.memMu.Unlock()
}
