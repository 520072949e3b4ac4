package cluster

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// Leases: how two nodes are kept from holding the same block or address.
//
// A node that wants a block (or a static address) registers a pending claim
// and asks every other member it sees alive or suspect for a vote, over a
// reliable direct message. It takes the block only if every one of them
// said yes before RequestTimeout; otherwise it tells them to forget the
// claim and tries another block. A voter says no when
//   - the block is granted to another node, or (address) the address is
//     claimed by another node or in use on the voter;
//   - the voter has its own pending claim on it and a lower name (lower name
//     wins; with a higher name it says yes and abandons its own claim: it
//     must never win after voting for someone else);
//   - it has promised it to a node with a lower name in the last
//     3×RequestTimeout.
// Otherwise it says yes and remembers the promise, and it does not pick a
// promised block itself.
//
// Why two claims X (node x) and Y (node y) on one block cannot both win,
// x < y: Y needs x's vote. If x was claiming, x refused (lower name). If x
// had not started yet, x promised the block to y and will not pick it while
// the promise lasts, which is longer than y waits; if x started later after
// all, it asks y, who either holds the block (no) or is still pending and
// abandons its own claim on voting yes. The owner of a granted block always
// votes, so a block held by a live node is never handed out twice.
//
// Limits: the votes come from the members this node sees. In a partition
// each side sees the other as dead after a few seconds and can lease the
// same free block; when the sides merge, last-writer-wins keeps one grant
// and the other node gets EventLeaseLost. Blocks of a node gone for longer
// than ReclaimLeasesAfter are released; if it was only partitioned for that
// long, it loses them (EventLeaseLost) and its endpoints must be renumbered.

type pendingClaim struct{ aborted bool }

type promise struct {
	node    string
	expires time.Time
}

// holder returns the node that holds k ("" when free) and a description
// for messages.
func (s *state) holder(k resKey) (node, desc string) {
	switch k.Kind {
	case resBlock:
		if e := s.leases[leaseKey{Net: k.Net, Block: k.P}]; e != nil && !e.rec.Deleted {
			return e.rec.Node, e.rec.Node
		}
	case resIP:
		if e := s.claims[claimKey{Net: k.Net, IP: k.P.Addr()}]; e != nil && !e.rec.Deleted {
			return e.rec.Node, fmt.Sprintf("%s for %s", e.rec.Node, e.rec.Owner)
		}
	}
	return "", ""
}

func (s *state) promisedToOther(k resKey, node string) (string, bool) {
	p, ok := s.promises[k]
	if !ok || p.node == node {
		return "", false
	}
	if !s.now().Before(p.expires) {
		delete(s.promises, k)
		return "", false
	}
	return p.node, true
}

// usedLocally returns the owner of an address this node hands out: one it
// allocated, or the address of one of its own endpoint records (which is
// how a node that restarted without a snapshot learns them back).
func (s *state) usedLocally(id NetworkID, ip netip.Addr) (string, bool) {
	if o, ok := s.allocs[claimKey{Net: id, IP: ip}]; ok {
		return o, true
	}
	o, ok := s.ownEndpointIPs(id)[ip]
	return o, ok
}

func (s *state) ownEndpointIPs(id NetworkID) map[netip.Addr]string {
	n := s.networks[id]
	if n == nil {
		return nil
	}
	ips := make(map[netip.Addr]string)
	for _, e := range s.endpoints {
		if !e.rec.Deleted && e.rec.EP.Node == s.self && e.rec.EP.Network == n.rec.Net.Name {
			ips[e.rec.EP.IP] = "endpoint " + e.rec.EP.ID
		}
	}
	return ips
}

// checkRes validates a claim against the network it is for.
func (s *state) checkRes(k resKey) error {
	n := s.networks[k.Net]
	if n == nil {
		return nil // not known here yet; the claimer checked it
	}
	spec := &n.rec.Net.NetworkSpec
	switch {
	case n.rec.Deleted:
		return fmt.Errorf("%w: network %q was removed", ErrNotFound, spec.Name)
	case !spec.Subnet.Contains(k.P.Addr()):
		return fmt.Errorf("%w: %s is outside subnet %s of %q", ErrInvalid, k.P, spec.Subnet, spec.Name)
	case k.Kind == resBlock && k.P.Bits() != spec.BlockBits:
		return fmt.Errorf("%w: block %s is not a /%d of %q", ErrInvalid, k.P, spec.BlockBits, spec.Name)
	case k.Kind == resIP && spec.reserved(k.P.Addr()):
		return fmt.Errorf("%w: %s is reserved (network, broadcast or gateway address) in %q", ErrInvalid, k.P.Addr(), spec.Name)
	}
	return nil
}

// vote answers a claim from another node (the rules are above).
func (s *state) vote(k resKey, from string, ttl time.Duration) (bool, string) {
	if err := s.checkRes(k); err != nil {
		return false, err.Error()
	}
	if h, desc := s.holder(k); h != "" && h != from {
		return false, fmt.Sprintf("%s is held by %s", k.P, desc)
	}
	if k.Kind == resIP {
		if o, used := s.usedLocally(k.Net, k.P.Addr()); used {
			return false, fmt.Sprintf("%s is in use on %s by %s", k.P.Addr(), s.self, o)
		}
	}
	if p := s.pending[k]; p != nil && !p.aborted {
		if s.self < from {
			return false, fmt.Sprintf("%s is being claimed by %s too, and the lower node name wins", k.P, s.self)
		}
		p.aborted = true
	}
	if other, ok := s.promisedToOther(k, from); ok && other < from {
		return false, fmt.Sprintf("%s is being claimed by %s, and the lower node name wins", k.P, other)
	}
	s.promises[k] = promise{node: from, expires: s.now().Add(ttl)}
	return true, ""
}

// releasePromise forgets a promise after the claimer gave up.
func (s *state) releasePromise(k resKey, from string) {
	if p, ok := s.promises[k]; ok && p.node == from {
		delete(s.promises, k)
	}
}

// beginClaim registers a local pending claim after checking what this node
// knows.
func (s *state) beginClaim(k resKey) error {
	if err := s.checkRes(k); err != nil {
		return err
	}
	if h, desc := s.holder(k); h != "" {
		return fmt.Errorf("%w: %s is held by %s", ErrConflict, k.P, desc)
	}
	if other, ok := s.promisedToOther(k, s.self); ok {
		return fmt.Errorf("%w: %s is being claimed by %s", ErrConflict, k.P, other)
	}
	if s.pending[k] != nil {
		return fmt.Errorf("%w: %s is already being claimed by this node", ErrConflict, k.P)
	}
	s.pending[k] = &pendingClaim{}
	return nil
}

// finishClaim ends a local claim; with every vote in favour and nothing
// having overtaken it, it writes the grant and returns it.
func (s *state) finishClaim(k resKey, owner string, allYes bool) (record, bool) {
	p := s.pending[k]
	delete(s.pending, k)
	if h, _ := s.holder(k); p == nil || p.aborted || !allYes || h != "" || s.checkRes(k) != nil {
		return record{}, false
	}
	if o, used := s.allocs[claimKey{Net: k.Net, IP: k.P.Addr()}]; k.Kind == resIP && used && o != owner {
		return record{}, false // handed out here meanwhile
	}
	var r record
	switch k.Kind {
	case resBlock:
		r = record{lease: &leaseRecord{Ver: s.tick(), Net: k.Net, Block: k.P, Node: s.self}}
	case resIP:
		r = record{claim: &claimRecord{Ver: s.tick(), Net: k.Net, IP: k.P.Addr(), Node: s.self, Owner: owner}}
		s.allocs[claimKey{Net: k.Net, IP: k.P.Addr()}] = owner
	}
	s.apply(r)
	return r, true
}

// pickBlock chooses a free block at random, so that nodes leasing at the
// same time rarely want the same one.
func (s *state) pickBlock(id NetworkID, exclude map[netip.Prefix]bool, rnd *rand.Rand) (netip.Prefix, error) {
	spec := &s.networks[id].rec.Net.NetworkSpec
	n := uint64(1) << (spec.BlockBits - spec.Subnet.Bits())
	base := addrU32(spec.Subnet.Addr())
	size := uint32(1) << (32 - spec.BlockBits)
	free := func(i uint64) (netip.Prefix, bool) {
		p := netip.PrefixFrom(u32Addr(base+uint32(i)*size), spec.BlockBits)
		k := resKey{Kind: resBlock, Net: id, P: p}
		if h, _ := s.holder(k); exclude[p] || h != "" || s.pending[k] != nil {
			return p, false
		}
		_, promised := s.promisedToOther(k, s.self)
		return p, !promised
	}
	if n > 1<<16 {
		for range 4096 {
			if p, ok := free(rnd.Uint64N(n)); ok {
				return p, nil
			}
		}
	} else {
		var cands []netip.Prefix
		for i := range n {
			if p, ok := free(i); ok {
				cands = append(cands, p)
			}
		}
		if len(cands) > 0 {
			return cands[rnd.IntN(len(cands))], nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("%w: no free /%d block left in %s of network %q", ErrExhausted, spec.BlockBits, spec.Subnet, spec.Name)
}

// allocate hands out the lowest free address of this node's blocks.
func (s *state) allocate(id NetworkID, owner string) (netip.Addr, bool) {
	spec := &s.networks[id].rec.Net.NetworkSpec
	var blocks []netip.Prefix
	for k, e := range s.leases {
		if k.Net == id && !e.rec.Deleted && e.rec.Node == s.self {
			blocks = append(blocks, k.Block)
		}
	}
	slices.SortFunc(blocks, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	own := s.ownEndpointIPs(id)
	for _, b := range blocks {
		for a := b.Addr(); b.Contains(a); a = a.Next() {
			k := claimKey{Net: id, IP: a}
			// A block's first and last addresses (10.77.1.0, .255) are
			// valid in a larger subnet, but users and tools take them for
			// network and broadcast addresses: not handed out (--ip may
			// still claim them).
			if a == b.Addr() || a == lastAddr(b) {
				continue
			}
			if spec.reserved(a) || s.claims[k] != nil && !s.claims[k].rec.Deleted {
				continue
			}
			if _, used := s.allocs[k]; used {
				continue
			}
			if _, used := own[a]; used {
				continue
			}
			rk := resKey{Kind: resIP, Net: id, P: netip.PrefixFrom(a, 32)}
			if _, promised := s.promisedToOther(rk, s.self); promised || s.pending[rk] != nil {
				continue
			}
			s.allocs[k] = owner
			return a, true
		}
	}
	return netip.Addr{}, false
}

// claim runs the vote for k and writes the grant if every member agreed.
func (c *Cluster) claim(ctx context.Context, k resKey, owner string) error {
	if err := c.locked(func(s *state) error { return s.beginClaim(k) }); err != nil {
		return err
	}
	targets := c.peers()
	resps, missing := c.call(ctx, targets, request{Op: opClaim, Res: k, Owner: owner})
	var refusals []string
	for _, r := range resps {
		if !r.OK {
			refusals = append(refusals, r.From+": "+r.Reason)
		}
	}
	var grant record
	var granted bool
	_ = c.locked(func(s *state) error {
		grant, granted = s.finishClaim(k, owner, len(refusals) == 0 && len(missing) == 0)
		return nil
	})
	if granted {
		c.resVer.Add(1)
		// The voters hold promises until they hear of the grant: tell them
		// directly rather than wait for gossip.
		msg := encodeMessage(message{Type: msgRecord, Record: &grant})
		for _, t := range targets {
			c.trySend(t, msg)
		}
		return nil
	}
	c.notify(targets, request{Op: opAbort, Res: k})
	switch {
	case len(refusals) > 0:
		slices.Sort(refusals)
		return fmt.Errorf("%w: %s refused: %s", ErrConflict, k.P, strings.Join(refusals, "; "))
	case len(missing) > 0:
		return fmt.Errorf("%w: no vote on %s from %s", ErrUnreachable, k.P, strings.Join(missing, ", "))
	case ctx.Err() != nil:
		return ctx.Err()
	}
	return fmt.Errorf("%w: %s was taken by a concurrent claim", ErrConflict, k.P)
}

// LeaseBlock leases a free block of the network's subnet for this node.
func (c *Cluster) LeaseBlock(ctx context.Context, network string) (netip.Prefix, error) {
	id, err := c.networkID(network)
	if err != nil {
		return netip.Prefix{}, err
	}
	exclude := make(map[netip.Prefix]bool)
	var last error
	for attempt := 1; attempt <= 20; attempt++ {
		var block netip.Prefix
		if err := c.locked(func(s *state) error {
			if s.networks[id] == nil || s.networks[id].rec.Deleted {
				return fmt.Errorf("%w: network %q", ErrNotFound, network)
			}
			block, err = s.pickBlock(id, exclude, c.rnd)
			return err
		}); err != nil {
			return netip.Prefix{}, fmt.Errorf("lease block of %q: %w", network, err)
		}
		last = c.claim(ctx, resKey{Kind: resBlock, Net: id, P: block}, "")
		switch {
		case last == nil:
			c.log.Debug("leased block", "network", network, "block", block)
			return block, nil
		case ctx.Err() != nil:
			return netip.Prefix{}, fmt.Errorf("lease block of %q: %w", network, ctx.Err())
		case errors.Is(last, ErrConflict):
			exclude[block] = true
		case !errors.Is(last, ErrUnreachable):
			return netip.Prefix{}, fmt.Errorf("lease block of %q: %w", network, last)
		}
		if err := c.sleep(ctx, time.Duration(attempt)*time.Duration(10+c.randN(40))*time.Millisecond); err != nil {
			return netip.Prefix{}, fmt.Errorf("lease block of %q: %w", network, err)
		}
	}
	return netip.Prefix{}, fmt.Errorf("lease block of %q: giving up: %w", network, last)
}

// ReleaseBlock gives a block back; it must have no addresses in use.
func (c *Cluster) ReleaseBlock(network string, block netip.Prefix) error {
	id, err := c.networkID(network)
	if err != nil {
		return err
	}
	return c.locked(func(s *state) error {
		e := s.leases[leaseKey{Net: id, Block: block}]
		if e == nil || e.rec.Deleted || e.rec.Node != s.self {
			return fmt.Errorf("%w: %s is not leased by %s in %q", ErrNotFound, block, s.self, network)
		}
		for k := range s.allocs {
			if k.Net == id && block.Contains(k.IP) {
				return fmt.Errorf("%w: %s still has address %s", ErrInUse, block, k.IP)
			}
		}
		r := e.rec
		r.Ver, r.Deleted = s.tick(), true
		s.apply(record{lease: &r})
		c.resVer.Add(1)
		return nil
	})
}

// AllocateIP hands out a free address of one of this node's blocks,
// leasing a new block when they are full.
func (c *Cluster) AllocateIP(ctx context.Context, network, owner string) (netip.Addr, error) {
	id, err := c.networkID(network)
	if err != nil {
		return netip.Addr{}, err
	}
	try := func() (ip netip.Addr, ok bool) {
		_ = c.locked(func(s *state) error {
			if s.networks[id] != nil && !s.networks[id].rec.Deleted {
				ip, ok = s.allocate(id, owner)
			}
			return nil
		})
		return ip, ok
	}
	mu, _ := c.leasing.LoadOrStore(id, &sync.Mutex{})
	for range 3 {
		if ip, ok := try(); ok {
			return ip, nil
		}
		// One new block at a time: concurrent allocations that all found
		// the blocks full wait for it instead of leasing one each.
		mu.(*sync.Mutex).Lock()
		ip, ok := try()
		var err error
		if !ok {
			_, err = c.LeaseBlock(ctx, network)
		}
		mu.(*sync.Mutex).Unlock()
		if ok {
			return ip, nil
		}
		if err != nil {
			return netip.Addr{}, fmt.Errorf("allocate address in %q: %w", network, err)
		}
	}
	return netip.Addr{}, fmt.Errorf("%w: allocate address in %q: new blocks were taken at once", ErrExhausted, network)
}

// ClaimIP claims a static address (--ip) for owner; it is refused with
// ErrConflict when another node holds or uses it.
func (c *Cluster) ClaimIP(ctx context.Context, network string, ip netip.Addr, owner string) error {
	id, err := c.networkID(network)
	if err != nil {
		return err
	}
	k := resKey{Kind: resIP, Net: id, P: netip.PrefixFrom(ip, 32)}
	if !ip.Is4() {
		return fmt.Errorf("%w: %s is not an IPv4 address", ErrInvalid, ip)
	}
	done := false
	if err := c.locked(func(s *state) error {
		if e := s.claims[claimKey{Net: id, IP: ip}]; e != nil && !e.rec.Deleted && e.rec.Node == s.self && e.rec.Owner == owner {
			done = true // idempotent
			return nil
		}
		if o, used := s.usedLocally(id, ip); used {
			return fmt.Errorf("%w: %s is in use on this node by %s", ErrConflict, ip, o)
		}
		return s.checkRes(k)
	}); err != nil || done {
		return err
	}
	var last error
	for attempt := 1; attempt <= 5; attempt++ {
		if last = c.claim(ctx, k, owner); last == nil || !errors.Is(last, ErrUnreachable) {
			break
		}
		if err := c.sleep(ctx, time.Duration(attempt)*200*time.Millisecond); err != nil {
			return err
		}
	}
	if last != nil {
		return fmt.Errorf("claim %s in %q: %w", ip, network, last)
	}
	return nil
}

// ReleaseIP frees an address handed out by AllocateIP or ClaimIP.
func (c *Cluster) ReleaseIP(network string, ip netip.Addr) error {
	id, err := c.networkID(network)
	if err != nil {
		return err
	}
	return c.locked(func(s *state) error {
		k := claimKey{Net: id, IP: ip}
		_, had := s.allocs[k]
		delete(s.allocs, k)
		if e := s.claims[k]; e != nil && !e.rec.Deleted && e.rec.Node == s.self {
			r := e.rec
			r.Ver, r.Deleted = s.tick(), true
			s.apply(record{claim: &r})
			c.resVer.Add(1)
			had = true
		}
		if !had {
			return fmt.Errorf("%w: %s is not allocated on this node in %q", ErrNotFound, ip, network)
		}
		return nil
	})
}

// Leases lists the blocks of a network held by any node.
func (c *Cluster) Leases(network string) []Lease {
	var out []Lease
	_ = c.locked(func(s *state) error {
		id, ok := s.accepted[network]
		if !ok {
			return nil
		}
		for k, e := range s.leases {
			if k.Net == id && !e.rec.Deleted {
				out = append(out, Lease{Network: network, Block: k.Block, Node: e.rec.Node})
			}
		}
		return nil
	})
	slices.SortFunc(out, func(a, b Lease) int { return a.Block.Addr().Compare(b.Block.Addr()) })
	return out
}

// Claims lists the static addresses of a network held by any node.
func (c *Cluster) Claims(network string) []Claim {
	var out []Claim
	_ = c.locked(func(s *state) error {
		id, ok := s.accepted[network]
		if !ok {
			return nil
		}
		for k, e := range s.claims {
			if k.Net == id && !e.rec.Deleted {
				out = append(out, Claim{Network: network, IP: k.IP, Node: e.rec.Node, Owner: e.rec.Owner})
			}
		}
		return nil
	})
	slices.SortFunc(out, func(a, b Claim) int { return a.IP.Compare(b.IP) })
	return out
}

func addrU32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func u32Addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
