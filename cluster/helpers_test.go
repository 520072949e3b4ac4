package cluster

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/hashicorp/memberlist"
)

// Test members run on 127.0.0.1 with kernel-picked ports, short grace
// periods and quick retries. CLUSTER_TEST_LOG=1 shows their logs.

func testLogger() *slog.Logger {
	if os.Getenv("CLUSTER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// testIdentity is a member's identity key, the same for every member of
// that name, so that a test can restart a member as the agent does (it
// keeps the key in its state directory).
func testIdentity(name string) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte("test identity " + name))
	return ed25519.NewKeyFromSeed(seed[:])
}

func testConfig(name string) Config {
	return Config{
		NodeName:          name,
		NodeKey:           testIdentity(name),
		BindAddr:          "127.0.0.1",
		BindPort:          AnyPort,
		Logger:            testLogger(),
		JoinBackoffMin:    50 * time.Millisecond,
		JoinBackoffMax:    500 * time.Millisecond,
		ReconnectInterval: 300 * time.Millisecond,
		RequestTimeout:    time.Second,
		Meta:              NodeMeta{TunnelPort: 4789, Datapath: "kernel", Version: "test"},
	}
}

// startMember creates and runs one member; it is closed when the test ends
// (closing twice is fine).
func startMember(t testing.TB, cfg Config) *Cluster {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", cfg.NodeName, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { defer close(runDone); _ = c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-runDone
		_ = c.Close()
	})
	return c
}

// startCluster starts n members named node-0..node-(n-1), joins them
// through the first and waits until all see all.
func startCluster(t testing.TB, n int, opts ...func(*Config)) []*Cluster {
	t.Helper()
	members := make([]*Cluster, n)
	for i := range n {
		cfg := testConfig(fmt.Sprintf("node-%d", i))
		for _, o := range opts {
			o(&cfg)
		}
		members[i] = startMember(t, cfg)
	}
	t.Cleanup(func() { closeAll(members) })
	// Each joins through all the earlier ones: a push/pull with each, so
	// the test does not wait for a gossiped alive message that was missed
	// (memberlist repairs that only at the next push/pull, up to 10s later).
	var seeds []string
	for i, c := range members {
		if i > 0 {
			if _, err := c.Join(context.Background(), seeds...); err != nil {
				t.Fatalf("join %s: %v", c.Name(), err)
			}
		}
		seeds = append(seeds, c.Addr().String())
	}
	netnstest.Eventually(t, 10*time.Second, "full membership", func() bool { return allSee(members, n) })
	return members
}

// closeAll closes members in parallel (each Close waits for its leave to
// be gossiped).
func closeAll(members []*Cluster) {
	var wg sync.WaitGroup
	for _, c := range members {
		wg.Add(1)
		go func() { defer wg.Done(); _ = c.Close() }()
	}
	wg.Wait()
}

func mustCreate(t testing.TB, c *Cluster, name, subnet string) Network {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := c.CreateNetwork(ctx, NetworkSpec{Name: name, Subnet: mustPrefix(t, subnet)})
	if err != nil {
		t.Fatalf("create %s on %s: %v", name, c.Name(), err)
	}
	return n
}

func waitNetwork(t testing.TB, members []*Cluster, name string, present bool) {
	t.Helper()
	netnstest.Eventually(t, 10*time.Second, fmt.Sprintf("network %s present=%v everywhere", name, present), func() bool {
		for _, c := range members {
			_, err := c.Network(name)
			if (err == nil) != present {
				return false
			}
		}
		return true
	})
}

// partition cuts gossip between groups of members: each member's transport
// drops packets to, and refuses connections to, members of other groups.
type partition struct {
	mu    sync.Mutex
	group map[int]int // port → group; absent means group 0
}

func newPartition() *partition { return &partition{group: make(map[int]int)} }

// split puts the given members in group 1, the rest stay in group 0.
func (p *partition) split(members ...*Cluster) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range members {
		p.group[int(c.Addr().Port())] = 1
	}
}

func (p *partition) heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	clear(p.group)
}

func (p *partition) cut(from int, to string) bool {
	_, port, err := net.SplitHostPort(to)
	if err != nil {
		return false
	}
	dst, _ := strconv.Atoi(port)
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.group[from] != p.group[dst]
}

func (p *partition) option(cfg *Config) {
	cfg.wrapTransport = func(t memberlist.NodeAwareTransport) memberlist.NodeAwareTransport {
		return &cutTransport{NodeAwareTransport: t, p: p, self: t.(*transport).Port()}
	}
}

type cutTransport struct {
	memberlist.NodeAwareTransport
	p    *partition
	self int
}

var errCut = errors.New("partitioned (test)")

func (t *cutTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if t.p.cut(t.self, addr) {
		return time.Now(), nil
	}
	return t.NodeAwareTransport.WriteTo(b, addr)
}

func (t *cutTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if t.p.cut(t.self, a.Addr) {
		return time.Now(), nil
	}
	return t.NodeAwareTransport.WriteToAddress(b, a)
}

func (t *cutTransport) DialTimeout(addr string, d time.Duration) (net.Conn, error) {
	if t.p.cut(t.self, addr) {
		return nil, errCut
	}
	return t.NodeAwareTransport.DialTimeout(addr, d)
}

func (t *cutTransport) DialAddressTimeout(a memberlist.Address, d time.Duration) (net.Conn, error) {
	if t.p.cut(t.self, a.Addr) {
		return nil, errCut
	}
	return t.NodeAwareTransport.DialAddressTimeout(a, d)
}

// collectEvents drains a member's events into a list the test can search.
type eventLog struct {
	mu     sync.Mutex
	events []Event
}

func watchEvents(t testing.TB, c *Cluster) *eventLog {
	l := &eventLog{}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case ev := <-c.Events():
				l.mu.Lock()
				l.events = append(l.events, ev)
				l.mu.Unlock()
			case <-done:
				return
			}
		}
	}()
	t.Cleanup(func() { close(done); <-stopped })
	return l
}

func (l *eventLog) find(match func(Event) bool) (Event, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ev := range l.events {
		if match(ev) {
			return ev, true
		}
	}
	return Event{}, false
}

func allSee(members []*Cluster, n int) bool {
	for _, c := range members {
		if c.NumAlive() != n {
			return false
		}
	}
	return true
}
