package cluster

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

func leaseMap(c *Cluster, network string) map[netip.Prefix]string {
	m := make(map[netip.Prefix]string)
	for _, l := range c.Leases(network) {
		m[l.Block] = l.Node
	}
	return m
}

// Eight members lease blocks and allocate addresses from one /16 at the
// same time: no block and no address may end up held twice.
func TestLeaseUniquenessUnderConcurrency(t *testing.T) {
	const n, blocksEach, addrsEach = 8, 3, 40
	members := startCluster(t, n)
	createNetwork(t, members, "ov", "10.20.0.0/16")

	ctx := timeoutCtx(t, 25*time.Second)
	blocks := &owners[netip.Prefix]{by: map[netip.Prefix]string{}}
	addrs := &owners[netip.Addr]{by: map[netip.Addr]string{}}
	var wg sync.WaitGroup
	errs := make(chan error, n*(blocksEach+addrsEach))
	for _, c := range members {
		for range blocksEach {
			wg.Go(func() {
				b, err := c.LeaseBlock(ctx, "ov")
				if err != nil {
					errs <- fmt.Errorf("%s: lease: %w", c.Name(), err)
					return
				}
				blocks.add(b, c.Name())
			})
		}
		for g := range 4 {
			wg.Go(func() {
				for i := range addrsEach / 4 {
					ip, err := c.AllocateIP(ctx, "ov", fmt.Sprintf("%s-ep%d-%d", c.Name(), g, i))
					if err != nil {
						errs <- fmt.Errorf("%s: allocate: %w", c.Name(), err)
						return
					}
					addrs.add(ip, c.Name())
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(blocks.dups)+len(addrs.dups) > 0 {
		t.Fatalf("held twice: blocks %v, addresses %v", blocks.dups, addrs.dups)
	}
	if len(addrs.by) != n*addrsEach {
		t.Fatalf("%d addresses allocated, want %d", len(addrs.by), n*addrsEach)
	}
	checkLeaseTables(t, members, blocks.by, addrs.by)
}

// owners records who got each of the things handed out at the same time,
// and every thing handed out twice.
type owners[K comparable] struct {
	mu   sync.Mutex
	by   map[K]string
	dups []string
}

func (o *owners[K]) add(k K, name string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if prev, ok := o.by[k]; ok {
		o.dups = append(o.dups, fmt.Sprintf("%v: %s and %s", k, prev, name))
	}
	o.by[k] = name
}

// checkLeaseTables: every member converges on the same lease table of
// "ov", which agrees with what each LeaseBlock returned (blocks), and
// every address lies in a /24 block of the member that handed it out.
func checkLeaseTables(t *testing.T, members []*Cluster, blocks map[netip.Prefix]string, addrs map[netip.Addr]string) {
	t.Helper()
	var table map[netip.Prefix]string
	defer func() {
		if t.Failed() {
			for _, c := range members {
				t.Logf("%s: %d leases, stats %+v", c.Name(), len(c.Leases("ov")), c.Stats())
			}
		}
	}()
	netnstest.Eventually(t, 10*time.Second, "identical lease tables", func() bool {
		table = leaseMap(members[0], "ov")
		for _, c := range members[1:] {
			if !maps.Equal(leaseMap(c, "ov"), table) {
				return false
			}
		}
		return true
	})
	for b, node := range blocks {
		if table[b] != node {
			t.Errorf("block %s leased by %s, table says %q", b, node, table[b])
		}
	}
	for ip, node := range addrs {
		b := netip.PrefixFrom(ip, 24).Masked()
		if table[b] != node {
			t.Errorf("address %s from %s lies in block %s of %q", ip, node, b, table[b])
		}
	}
	t.Logf("%d blocks, %d addresses, all distinct", len(table), len(addrs))
}

// All members claim the same block at once: at most one gets it.
func TestSameBlockContention(t *testing.T) {
	members := startCluster(t, 6)
	net := createNetwork(t, members, "hot", "10.30.0.0/16")
	for round := range 4 {
		block := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 30, byte(round), 0}), 24)
		k := resKey{Kind: resBlock, Net: net.ID, P: block}
		var wg sync.WaitGroup
		results := make([]error, len(members))
		for i, c := range members {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				results[i] = c.claim(ctx, k, "")
			}()
		}
		wg.Wait()
		var winners []string
		for i, err := range results {
			switch {
			case err == nil:
				winners = append(winners, members[i].Name())
			case !errors.Is(err, ErrConflict):
				t.Errorf("round %d: %s: %v", round, members[i].Name(), err)
			}
		}
		if len(winners) > 1 {
			t.Fatalf("round %d: block %s granted to %v", round, block, winners)
		}
		t.Logf("round %d: winner %v", round, winners)
		if len(winners) == 1 {
			netnstest.Eventually(t, 5*time.Second, "grant everywhere", func() bool {
				for _, c := range members {
					if leaseMap(c, "hot")[block] != winners[0] {
						return false
					}
				}
				return true
			})
		}
	}
}

func TestStaticIPClaims(t *testing.T) {
	members := startCluster(t, 3)
	createNetwork(t, members, "st", "10.40.0.0/16")
	ctx := timeoutCtx(t, 20*time.Second)
	ip := netip.MustParseAddr("10.40.7.7")

	if err := members[0].ClaimIP(ctx, "st", ip, "web"); err != nil {
		t.Fatal(err)
	}
	if err := members[0].ClaimIP(ctx, "st", ip, "web"); err != nil {
		t.Errorf("repeated claim by the holder: %v", err)
	}
	err := members[1].ClaimIP(ctx, "st", ip, "db")
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("second claim: %v, want ErrConflict", err)
	}
	t.Logf("refused: %v", err)
	if err := members[1].ClaimIP(ctx, "st", netip.MustParseAddr("10.40.0.1"), "gw"); !errors.Is(err, ErrInvalid) {
		t.Errorf("gateway claim: %v, want ErrInvalid", err)
	}
	if err := members[1].ClaimIP(ctx, "st", netip.MustParseAddr("10.41.0.5"), "out"); !errors.Is(err, ErrInvalid) {
		t.Errorf("out-of-subnet claim: %v, want ErrInvalid", err)
	}

	// An address inside another member's block: refused while that member
	// uses it, granted otherwise, and then skipped by its allocator.
	block, err := members[2].LeaseBlock(ctx, "st")
	if err != nil {
		t.Fatal(err)
	}
	used, err := members[2].AllocateIP(ctx, "st", "local")
	if err != nil || !block.Contains(used) {
		t.Fatalf("allocate: %s in %s, %v", used, block, err)
	}
	if err := members[1].ClaimIP(ctx, "st", used, "thief"); !errors.Is(err, ErrConflict) {
		t.Errorf("claim of an address in use: %v, want ErrConflict", err)
	}
	static := used.Next()
	if err := members[1].ClaimIP(ctx, "st", static, "pinned"); err != nil {
		t.Fatalf("claim of a free address in another's block: %v", err)
	}
	netnstest.Eventually(t, 5*time.Second, "claim replicated", func() bool { return len(members[2].Claims("st")) == 2 })
	for range 20 {
		a, err := members[2].AllocateIP(ctx, "st", "more")
		if err != nil {
			t.Fatal(err)
		}
		if a == static || a == ip {
			t.Fatalf("allocator handed out statically claimed %s", a)
		}
	}

	// Released claims can be claimed again.
	if err := members[0].ReleaseIP("st", ip); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 5*time.Second, "release replicated", func() bool {
		for _, c := range members[1].Claims("st") {
			if c.IP == ip {
				return false
			}
		}
		return true
	})
	if err := members[1].ClaimIP(ctx, "st", ip, "db"); err != nil {
		t.Errorf("claim after release: %v", err)
	}
}

// The blocks of a member that is gone for longer than ReclaimLeasesAfter
// are released everywhere and can be leased again.
func TestReclaimDeadMemberBlocks(t *testing.T) {
	members := startCluster(t, 3, func(c *Config) { c.ReclaimLeasesAfter = time.Second })
	mustCreate(t, members[0], "rc", "10.50.0.0/22") // sixteen /26 blocks (the default for a /22)
	waitNetwork(t, members, "rc", true)
	ctx := timeoutCtx(t, 20*time.Second)
	var held []netip.Prefix
	for range 3 {
		b, err := members[2].LeaseBlock(ctx, "rc")
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, b)
	}
	netnstest.Eventually(t, 5*time.Second, "leases replicated", func() bool { return len(members[0].Leases("rc")) == 3 })

	_ = members[2].shutdown(false) // crash: no leave
	start := time.Now()
	live := members[:2]
	netnstest.Eventually(t, 15*time.Second, "blocks reclaimed", func() bool {
		for _, c := range live {
			if len(c.Leases("rc")) != 0 {
				return false
			}
		}
		return true
	})
	t.Logf("reclaimed %s after the crash (detection + 1s grace)", time.Since(start).Round(time.Millisecond))
	// Sixteen more leases take the whole subnet, reclaimed blocks included.
	got := make(map[netip.Prefix]bool)
	for range 16 {
		b, err := members[0].LeaseBlock(ctx, "rc")
		if err != nil {
			t.Fatal(err)
		}
		got[b] = true
	}
	for _, b := range held {
		if !got[b] {
			t.Errorf("reclaimed block %s was not leased again", b)
		}
	}
	if _, err := members[1].LeaseBlock(ctx, "rc"); !errors.Is(err, ErrExhausted) {
		t.Errorf("lease from a full subnet: %v, want ErrExhausted", err)
	}
}

// A member that restarts with the same name keeps its blocks: it learns
// them back from the others, and with its snapshot also its allocations.
func TestRestartKeepsBlocks(t *testing.T) {
	members := startCluster(t, 3)
	createNetwork(t, members, "rs", "10.60.0.0/16")
	ctx := timeoutCtx(t, 20*time.Second)
	m2 := members[2]
	first, err := m2.AllocateIP(ctx, "rs", "a")
	if err != nil {
		t.Fatal(err)
	}
	block := netip.PrefixFrom(first, 24).Masked()
	netnstest.Eventually(t, 5*time.Second, "lease replicated", func() bool { return leaseMap(members[0], "rs")[block] == "node-2" })
	snap, err := m2.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := m2.Close(); err != nil {
		t.Fatal(err)
	}

	for i, restore := range []bool{false, true} {
		back := startMember(t, testConfig("node-2"))
		if restore {
			if err := back.Restore(snap); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := back.Join(ctx, members[0].Addr().String()); err != nil {
			t.Fatal(err)
		}
		netnstest.Eventually(t, 5*time.Second, "blocks learned back", func() bool { return leaseMap(back, "rs")[block] == "node-2" })
		ip, err := back.AllocateIP(ctx, "rs", "b")
		if err != nil {
			t.Fatal(err)
		}
		if !block.Contains(ip) {
			t.Errorf("restart %d: allocated %s outside the kept block %s", i, ip, block)
		}
		if restore && ip == first {
			t.Errorf("restart with snapshot handed out %s again", ip)
		}
		if len(back.Leases("rs")) != 1 {
			t.Errorf("restart %d: %d leases, want the one kept", i, len(back.Leases("rs")))
		}
		if err := back.Close(); err != nil {
			t.Fatal(err)
		}
		netnstest.Eventually(t, 5*time.Second, "node-2 left", func() bool { return members[0].NumAlive() == 2 })
	}
}

// ReservationVersion moves exactly when this node's blocks or claimed
// addresses change: the agent saves its snapshot on those, not on every
// endpoint.
func TestReservationVersion(t *testing.T) {
	members := startCluster(t, 2)
	a := members[0]
	mustCreate(t, a, "rv", "10.31.0.0/16")
	waitNetwork(t, members, "rv", true)
	ctx := timeoutCtx(t, 10*time.Second)
	step := func(what string, want bool, fn func() error) {
		t.Helper()
		before := a.ReservationVersion()
		if err := fn(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if moved := a.ReservationVersion() != before; moved != want {
			t.Errorf("%s: reservation version moved=%v, want %v", what, moved, want)
		}
	}
	var ip1, ip2 netip.Addr
	step("first address (leases a block)", true, func() (err error) { ip1, err = a.AllocateIP(ctx, "rv", "e1"); return })
	step("second address in the same block", false, func() (err error) { ip2, err = a.AllocateIP(ctx, "rv", "e2"); return })
	step("release a dynamic address", false, func() error { return a.ReleaseIP("rv", ip2) })
	static := netip.MustParseAddr("10.31.200.7")
	step("claim a static address", true, func() error { return a.ClaimIP(ctx, "rv", static, "e3") })
	step("claim it again (idempotent)", false, func() error { return a.ClaimIP(ctx, "rv", static, "e3") })
	step("release the static address", true, func() error { return a.ReleaseIP("rv", static) })
	step("release the last dynamic address", false, func() error { return a.ReleaseIP("rv", ip1) })
	step("give the block back", true, func() error { return a.ReleaseBlock("rv", netip.PrefixFrom(ip1, 24).Masked()) })
	if got := members[1].ReservationVersion(); got != 0 {
		t.Errorf("the other member's reservation version is %d; it reserved nothing", got)
	}
}
