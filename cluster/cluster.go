package cluster

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
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
	tr       *transport                            // its own, also under a test's wrapTransport
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
	suspected  map[string]struct{}  // members this node's probes found silent (suspect.go)
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
	c, err := newCluster(cfg)
	if err != nil {
		return nil, err
	}
	mc, tr, err := c.memberlistConfig()
	if err != nil {
		return nil, err
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		_ = tr.Shutdown()
		return nil, fmt.Errorf("start gossip on %s:%d: %w", cfg.BindAddr, cfg.BindPort, err)
	}
	c.tr = tr
	c.start(ml)
	return c, nil
}

// newCluster builds the node's local parts (identity, state, event queue,
// metadata) from a validated cfg, before any socket is opened.
func newCluster(cfg Config) (*Cluster, error) {
	c := &Cluster{
		cfg:       cfg,
		log:       cfg.Logger.With("node", cfg.NodeName),
		members:   make(map[string]*Member),
		leaving:   make(map[string]leaveSeen),
		suspected: make(map[string]struct{}),
		rpcs:      make(map[uint64]chan response),
		sendSem:   make(chan struct{}, 128),
		outbox:    make(chan *outMsg, outboxSize),
		done:      make(chan struct{}),
		rnd:       rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
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
	return c, nil
}

// memberlistConfig wires c into a memberlist configuration: delegates,
// keyring, the listening transport (returned so that the caller can shut it
// down if memberlist fails to start) and the broadcast queue.
func (c *Cluster) memberlistConfig() (*memberlist.Config, *transport, error) {
	cfg := c.cfg
	mc := memberlist.DefaultLANConfig()
	tuneLAN(mc)
	mc.Name = cfg.NodeName
	mc.BindAddr, mc.BindPort = cfg.BindAddr, cfg.BindPort
	mc.AdvertiseAddr, mc.AdvertisePort = cfg.AdvertiseAddr, cfg.AdvertisePort
	if mc.AdvertisePort == 0 {
		mc.AdvertisePort = cfg.BindPort
	}
	mc.Logger = newStdLogger(c.log.With("component", "memberlist"), c.onMemberlistLine)
	mc.Delegate = &delegate{c}
	mc.Events = &eventDelegate{c}
	mc.Alive = &aliveDelegate{c}
	mc.Ping = &pingDelegate{c}
	mc.DelegateProtocolVersion, mc.DelegateProtocolMin, mc.DelegateProtocolMax = codecVersion, codecVersion, codecVersion
	if len(cfg.SecretKeys) > 0 {
		kr, err := memberlist.NewKeyring(cfg.SecretKeys[1:], cfg.SecretKeys[0])
		if err != nil {
			return nil, nil, fmt.Errorf("%w: gossip keyring: %w", ErrInvalid, err)
		}
		c.keyring, mc.Keyring = kr, kr
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}
	tr, err := newTransport(cfg.BindAddr, cfg.BindPort, c.log.With("component", "memberlist"))
	if err != nil {
		return nil, nil, fmt.Errorf("start gossip on %s:%d: %w", cfg.BindAddr, cfg.BindPort, err)
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
	return mc, tr, nil
}

// start records the running memberlist, learns the advertised address
// (into the metadata too when none was configured) and starts delivering
// events.
func (c *Cluster) start(ml *memberlist.Memberlist) {
	cfg := c.cfg
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
	s.Suspect = c.numSuspect()
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

// GossipTraffic is what this node's gossip sockets carried so far.
func (c *Cluster) GossipTraffic() Traffic { return c.tr.traffic() }

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
