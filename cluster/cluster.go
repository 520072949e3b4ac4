package cluster

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Cluster is this node's view of the fabric: membership and the replicated
// state. Create it with New, run Run in a goroutine, and Close it.
type Cluster struct {
	cfg      Config
	identity ed25519.PrivateKey // signs direct messages (identity.go)
	log      *slog.Logger
	ml       *memberlist.Memberlist
	mlRef    atomic.Pointer[memberlist.Memberlist] // for callbacks that may run before New returns
	keyring  *memberlist.Keyring
	queue    *memberlist.TransmitLimitedQueue
	meta     atomic.Pointer[[]byte]
	addr     netip.AddrPort // advertised gossip address
	stats    counters
	joinErr  atomic.Pointer[error] // last failed join, nil after a successful one
	events   *eventQueue

	// mu guards st. It is never held while calling memberlist, because
	// memberlist calls our delegates with its own locks held.
	mu  sync.Mutex
	st  *state
	rnd *rand.Rand // under mu

	// memMu guards members and is a leaf: nothing else is locked or called
	// while holding it.
	memMu      sync.Mutex
	members    map[string]*Member
	leaving    map[string]leaveSeen // leave intents seen, by node; expire (maintain)
	joinedOnce atomic.Bool

	rpcMu sync.Mutex
	rpcs  map[uint64]chan response

	sendSem chan struct{} // bounds the goroutines sending requests
	outbox  chan *outMsg  // replies and notifications, for the reply workers (pointers: the buffer is 8 KiB, not 100)
	senders atomic.Int32  // reply workers running (rpc.go)
	leasing sync.Map      // NetworkID → *sync.Mutex: one block lease at a time per network for AllocateIP
	resVer  atomic.Uint64 // bumped when this node's blocks or claimed addresses change

	lifeMu    sync.Mutex
	closed    bool
	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// MemberState is a member's state as far as this node knows.
type MemberState int

const (
	MemberAlive  MemberState = 1
	MemberFailed MemberState = 2
	MemberLeft   MemberState = 3
)

func (s MemberState) String() string {
	switch s {
	case MemberAlive:
		return "alive"
	case MemberFailed:
		return "failed"
	case MemberLeft:
		return "left"
	}
	return "unknown"
}

// Member is one node of the cluster.
type Member struct {
	Name  string
	Addr  netip.AddrPort // gossip address
	Meta  NodeMeta
	State MemberState
	Since time.Time // when State last changed, as seen here

	// rawMeta is Meta as memberlist holds it (shared, never written): an
	// alive message carrying the same bytes needs no decoding (delegate.go).
	rawMeta []byte
}

// New creates the memberlist node and starts listening; it does not join.
func New(cfg Config) (*Cluster, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	c := &Cluster{
		cfg:     cfg,
		log:     cfg.Logger.With("node", cfg.NodeName),
		members: make(map[string]*Member),
		leaving: make(map[string]leaveSeen),
		rpcs:    make(map[uint64]chan response),
		sendSem: make(chan struct{}, 128),
		outbox:  make(chan *outMsg, outboxSize),
		done:    make(chan struct{}),
		rnd:     rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
	}
	id, err := newIdentity(cfg.NodeKey)
	if err != nil {
		return nil, err
	}
	c.identity = id
	c.events = newEventQueue(cfg.EventBuffer, &c.stats)
	c.st = newState(cfg.NodeName, c.events.emit)
	c.st.sign = c.signRecord
	c.st.rejected = c.stats.drop
	if err := c.setMeta(cfg.Meta); err != nil {
		return nil, err
	}

	mc := memberlist.DefaultLANConfig()
	tuneLAN(mc)
	mc.Name = cfg.NodeName
	mc.BindAddr, mc.BindPort = cfg.BindAddr, cfg.BindPort
	mc.AdvertiseAddr, mc.AdvertisePort = cfg.AdvertiseAddr, cfg.AdvertisePort
	if mc.AdvertisePort == 0 {
		mc.AdvertisePort = cfg.BindPort
	}
	mc.Logger = newStdLogger(c.log.With("component", "memberlist"), c.countMemberlistDrop)
	mc.Delegate = &delegate{c}
	mc.Events = &eventDelegate{c}
	mc.Alive = &aliveDelegate{c}
	mc.DelegateProtocolVersion, mc.DelegateProtocolMin, mc.DelegateProtocolMax = codecVersion, codecVersion, codecVersion
	if len(cfg.SecretKeys) > 0 {
		kr, err := memberlist.NewKeyring(cfg.SecretKeys[1:], cfg.SecretKeys[0])
		if err != nil {
			return nil, fmt.Errorf("%w: gossip keyring: %v", ErrInvalid, err)
		}
		c.keyring, mc.Keyring = kr, kr
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}
	tr, err := newTransport(cfg.BindAddr, cfg.BindPort, c.log.With("component", "memberlist"))
	if err != nil {
		return nil, fmt.Errorf("start gossip on %s:%d: %w", cfg.BindAddr, cfg.BindPort, err)
	}
	mc.BindPort = tr.Port()
	if mc.AdvertisePort == 0 {
		mc.AdvertisePort = tr.Port()
	}
	mc.Transport = tr
	if cfg.wrapTransport != nil {
		mc.Transport = cfg.wrapTransport(tr)
	}
	if cfg.tuneMemberlist != nil {
		cfg.tuneMemberlist(mc)
	}
	// Each record is sent RetransmitMult × ceil(log10(n+1)) times by every
	// node that learns it; a member misses it with probability about
	// e^-limit. Below 100 members that would be 4 sends and a miss every
	// few dozen records (then only push/pull repairs it, up to 10s later),
	// so count at least 100 members: 12 sends, ~1e-5 misses.
	c.queue = &memberlist.TransmitLimitedQueue{RetransmitMult: mc.RetransmitMult, NumNodes: func() int {
		if ml := c.mlRef.Load(); ml != nil {
			return max(ml.NumMembers(), 100)
		}
		return 100
	}}

	ml, err := memberlist.Create(mc)
	if err != nil {
		_ = tr.Shutdown()
		return nil, fmt.Errorf("start gossip on %s:%d: %w", cfg.BindAddr, cfg.BindPort, err)
	}
	c.ml = ml
	c.mlRef.Store(ml)
	local := ml.LocalNode()
	ip, _ := netip.AddrFromSlice(local.Addr)
	c.addr = netip.AddrPortFrom(ip.Unmap(), local.Port)
	if !cfg.Meta.Addr.IsValid() {
		cfg.Meta.Addr = c.addr.Addr()
		c.cfg.Meta = cfg.Meta
		if err := c.setMeta(cfg.Meta); err == nil {
			_ = ml.UpdateNode(0)
		}
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.events.run(c.done)
	}()
	c.log.Info("gossip started", "addr", c.addr, "encrypted", c.keyring != nil)
	return c, nil
}

func (c *Cluster) setMeta(m NodeMeta) error {
	copy(m.Identity[:], c.identity.Public().(ed25519.PublicKey))
	b, err := encodeMeta(m)
	if err != nil {
		return err
	}
	c.meta.Store(&b)
	return nil
}

// UpdateMeta changes what this node tells the others (the name cannot
// change).
func (c *Cluster) UpdateMeta(m NodeMeta) error {
	if m.Name == "" {
		m.Name = c.cfg.NodeName
	}
	if m.Name != c.cfg.NodeName {
		return fmt.Errorf("%w: metadata name %q differs from node name %q", ErrInvalid, m.Name, c.cfg.NodeName)
	}
	if err := c.setMeta(m); err != nil {
		return err
	}
	if err := c.ml.UpdateNode(c.cfg.RequestTimeout); err != nil {
		return fmt.Errorf("announce metadata: %w", err)
	}
	return nil
}

// Addr returns the advertised gossip address, to give others as a seed.
func (c *Cluster) Addr() netip.AddrPort { return c.addr }

// Name returns the node name.
func (c *Cluster) Name() string { return c.cfg.NodeName }

// Events delivers changes in order. The channel is never closed; a reader
// more than EventBuffer events behind loses events and then receives
// EventResync. Events not read before Close are not delivered.
func (c *Cluster) Events() <-chan Event { return c.events.ch }

// Stats returns the counters.
func (c *Cluster) Stats() Stats {
	s := c.stats.snapshot()
	c.mu.Lock()
	s.StateVersion = c.st.version
	for _, e := range c.st.leases {
		if !e.rec.Deleted && e.rec.Node == c.st.self {
			s.Leases++
		}
	}
	c.mu.Unlock()
	s.HealthScore = c.ml.GetHealthScore()
	for _, n := range c.ml.Members() {
		if n.State == memberlist.StateSuspect {
			s.Suspect++
		}
	}
	return s
}

// StateVersion is bumped on every change to the replicated state; cheaper
// than Stats for "did anything change".
func (c *Cluster) StateVersion() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.version
}

// ReservationVersion is bumped whenever this node is granted or gives back
// a block or a claimed (static) address: the changes worth saving at once,
// because no other member may remember them for us.
func (c *Cluster) ReservationVersion() uint64 { return c.resVer.Load() }

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

// Close leaves the cluster gracefully, shuts gossip down and waits for
// every goroutine of the package.
func (c *Cluster) Close() error { return c.shutdown(true) }

// Stop shuts gossip down without leaving: the others see this node fail,
// and see it alive again when it comes back (an agent restart), keeping
// its leases and, if it is back within the failure timeout, its forwarding
// entries everywhere.
func (c *Cluster) Stop() error { return c.shutdown(false) }

// shutdown without leave is a crash (Stop).
func (c *Cluster) shutdown(leave bool) error {
	var err error
	c.closeOnce.Do(func() {
		c.lifeMu.Lock()
		c.closed = true
		close(c.done)
		c.lifeMu.Unlock()
		if leave {
			if c.ml.NumMembers() > 1 {
				// Announce the leave first and give it a few gossip rounds.
				li := leaveIntent{Node: c.cfg.NodeName, Stamp: uint64(time.Now().UnixNano())}
				c.queue.QueueBroadcast(&broadcast{key: "leave/" + li.Node, msg: c.sign(encodeMessage(message{Type: msgLeave, Leave: &li}))})
				time.Sleep(300 * time.Millisecond)
			}
			if e := c.ml.Leave(time.Second); e != nil {
				err = fmt.Errorf("leave: %w", e)
			}
		}
		if e := c.ml.Shutdown(); e != nil && err == nil {
			err = fmt.Errorf("shutdown: %w", e)
		}
		c.wg.Wait()
		c.log.Info("gossip stopped")
	})
	return err
}

// enter registers a goroutine with the WaitGroup unless Close has begun.
func (c *Cluster) enter() bool {
	c.lifeMu.Lock()
	defer c.lifeMu.Unlock()
	if c.closed {
		return false
	}
	c.wg.Add(1)
	return true
}

// locked runs fn on the state under the lock, then broadcasts what fn
// changed.
func (c *Cluster) locked(fn func(*state) error) error {
	c.mu.Lock()
	err := fn(c.st)
	out := c.st.takeOut()
	c.mu.Unlock()
	c.broadcast(out)
	return err
}

func (c *Cluster) randN(n int) int {
	if n <= 0 {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rnd.IntN(n)
}

func (c *Cluster) sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return ErrClosed
	}
}

// Members returns every member this node knows, alive or gone, by name.
func (c *Cluster) Members() []Member {
	c.memMu.Lock()
	out := make([]Member, 0, len(c.members))
	for _, m := range c.members {
		out = append(out, *m)
	}
	c.memMu.Unlock()
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Ping measures the round trip to a member over its gossip address (the
// underlay path, UDP), with memberlist's own probe. It fails for a member
// that is not alive or does not answer within the probe timeout.
func (c *Cluster) Ping(name string) (time.Duration, error) {
	c.memMu.Lock()
	m := c.members[name]
	alive := m != nil && m.State == MemberAlive
	var addr netip.AddrPort
	if alive {
		addr = m.Addr
	}
	c.memMu.Unlock()
	if !alive {
		return 0, fmt.Errorf("%w: member %q is not alive", ErrNotFound, name)
	}
	return c.ml.Ping(name, net.UDPAddrFromAddrPort(addr))
}

// JoinError is why the last attempt to join the seeds failed, nil if it
// succeeded or none was made. A node alone with a JoinError is not part of
// the cluster it was told to join.
func (c *Cluster) JoinError() error {
	if p := c.joinErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Encrypted reports whether gossip is encrypted and authenticated.
func (c *Cluster) Encrypted() bool { return c.keyring != nil }

// NumAlive returns how many members (this one included) are alive.
func (c *Cluster) NumAlive() int { return c.ml.NumMembers() }

// peers returns the other members memberlist considers alive or suspect:
// the ones that must vote. They come from this node's own list, which the
// event delegate keeps in step with memberlist's under memberlist's lock:
// the nodes memberlist.Members returns are its live records, which it
// goes on writing after the call returns (a data race to copy).
func (c *Cluster) peers() []memberlist.Node {
	c.memMu.Lock()
	defer c.memMu.Unlock()
	out := make([]memberlist.Node, 0, len(c.members))
	for _, m := range c.members {
		if m.Name != c.cfg.NodeName && m.State == MemberAlive {
			out = append(out, memberlist.Node{Name: m.Name, Addr: m.Addr.Addr().AsSlice(), Port: m.Addr.Port()})
		}
	}
	return out
}
