package ebpf

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// hostIfindex is the ifindex of h's host veth.
func (l *upgradeLab) hostIfindex(h *overlayHost) int {
	l.t.Helper()
	nl := netnstest.Handle(l.t, l.a.path)
	defer nl.Close()
	hl, err := nl.LinkByName(h.ep.HostIfName)
	if err != nil {
		l.t.Fatalf("host veth %s: %v", h.ep.HostIfName, err)
	}
	return hl.Attrs().Index
}

// expectShared checks that every endpoint veth of hs has its clsact
// qdisc bound to the datapath's shared blocks (so the kernel made no
// private block for it), that one filter serves them all, and that no
// per-veth pin exists.
func (l *upgradeLab) expectShared(t *testing.T, hs ...*overlayHost) {
	t.Helper()
	blk := l.a.dp.fwd.epBlock
	if blk == 0 {
		t.Fatal("no endpoint tc block chosen")
	}
	for _, h := range hs {
		ifindex := l.hostIfindex(h)
		c, ok := clsactIn(t, l.a.path, ifindex)
		if !ok || c.ingress != blk || c.egress != blk+1 {
			t.Errorf("%s: clsact %v (present %v), want bound to blocks %d/%d", h.ep.HostIfName, c, ok, blk, blk+1)
		}
	}
	if n := len(blockFilters(t, l.a.path, blk)); n != 1 {
		t.Errorf("%d filters on the ingress block %d, want 1 for all endpoints", n, blk)
	}
	if n := len(blockFilters(t, l.a.path, blk+1)); n != 0 {
		t.Errorf("%d filters on the egress block %d, want none", n, blk+1)
	}
	if blockProgram(t, l.a.path, l.a.opts.BPFRoot, blk) == 0 {
		t.Errorf("no fabric filter on block %d", blk)
	}
	if pins, _ := filepath.Glob(filepath.Join(l.a.opts.BPFRoot, "links", "ep-*")); len(pins) != 0 {
		t.Errorf("per-veth pins left: %v", pins)
	}
}

// TestEndpointsShareOneTCBlock: endpoint veths' clsact qdiscs are bound
// to the datapath's shared tc blocks and the endpoint program is one
// filter on the ingress block; a further endpoint adds a qdisc bound to
// the same blocks (no private block, whose creation walks a kernel list
// with one entry per private block) and no filter.
func TestEndpointsShareOneTCBlock(t *testing.T) {
	l := newUpgradeLab(t)
	l.expectShared(t, l.a, l.b)
	c := &overlayHost{t: t, name: l.a.name, path: l.a.path, opts: l.a.opts}
	c.addSandbox(l.net, 4)
	if err := l.a.dp.EnsureEndpoint(context.Background(), l.net, c.ep); err != nil {
		t.Fatal(err)
	}
	l.expectShared(t, l.a, l.b, c)
	for _, to := range []*overlayHost{l.b, c} {
		if err := l.a.ping(to.ep.Addr.Addr(), 1); err != nil {
			t.Fatal(err)
		}
	}
	// A removed endpoint's veth leaves the block; the others keep it.
	ifindex := l.hostIfindex(c)
	if err := l.a.dp.DeleteEndpoint(context.Background(), l.net, c.ep); err != nil {
		t.Fatal(err)
	}
	if q, ok := clsactIn(t, l.a.path, ifindex); ok {
		t.Errorf("deleted endpoint's veth keeps its clsact qdisc %v", q)
	}
	l.expectShared(t, l.a, l.b)
	if err := l.a.ping(l.b.ep.Addr.Addr(), 1); err != nil {
		t.Fatal(err)
	}
}

// TestEndpointTCBlockDriftIsRepaired: an endpoint veth's clsact qdisc
// deleted by hand, then the block's filter deleted by hand: each Sync
// puts it back and counts one program repair.
func TestEndpointTCBlockDriftIsRepaired(t *testing.T) {
	l := newUpgradeLab(t)
	ctx := context.Background()
	s := datapath.State{Networks: []datapath.Network{l.net}, Endpoints: []datapath.Endpoint{l.a.ep, l.b.ep}}
	repairs := func() uint64 {
		t.Helper()
		if err := l.a.dp.Sync(ctx, s); err != nil {
			t.Fatalf("Sync: %v", err)
		}
		m, err := l.a.dp.Metrics()
		if err != nil {
			t.Fatal(err)
		}
		return m.Repairs[datapath.RepairProgram]
	}
	if n := repairs(); n != 0 {
		t.Fatalf("a pass without drift repaired %d programs", n)
	}
	sock, err := openTCSock(l.a.path)
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	blk := l.a.dp.fwd.epBlock
	nl := netnstest.Handle(t, l.a.path)
	defer nl.Close()
	for i, d := range []struct {
		name   string
		remove func() error
	}{
		{"clsact qdisc", func() error { return sock.delClsact(l.hostIfindex(l.b)) }},
		{"block filter", func() error {
			return nl.FilterDel(&netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{
				LinkIndex: tcmIfindexMagicBlock, Parent: blk, Handle: clsactHandle, Priority: clsactPrio, Protocol: unix.ETH_P_ALL}})
		}},
	} {
		if err := d.remove(); err != nil {
			t.Fatalf("remove %s: %v", d.name, err)
		}
		if l.a.ping(l.b.ep.Addr.Addr(), 1) == nil {
			t.Fatalf("%s removed, but the sandboxes still reach each other", d.name)
		}
		if n := repairs(); n != uint64(i+1) {
			t.Errorf("%s: %d program repairs, want %d", d.name, n, i+1)
		}
		l.expectShared(t, l.a, l.b)
		if err := l.a.ping(l.b.ep.Addr.Addr(), 1); err != nil {
			t.Fatalf("after the %s's repair: %v", d.name, err)
		}
	}
}

// TestPerVethFiltersOfAnOlderAgentAreConverted: endpoints an older agent
// left with a private clsact qdisc, its own filter and a per-veth pin
// each run on the shared block after a restart, with no pin left.
func TestPerVethFiltersOfAnOlderAgentAreConverted(t *testing.T) {
	l := newUpgradeLab(t)
	sock, err := openTCSock(l.a.path)
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	nl := netnstest.Handle(t, l.a.path)
	defer nl.Close()
	prog := l.a.dp.fwd.objs.FromEndpoint()
	for _, h := range []*overlayHost{l.a, l.b} {
		ifindex := l.hostIfindex(h)
		if err := sock.delClsact(ifindex); err != nil {
			t.Fatal(err)
		}
		qd := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}
		if err := nl.QdiscAdd(qd); err != nil {
			t.Fatal(err)
		}
		flt := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: netlink.HANDLE_MIN_INGRESS,
			Handle: clsactHandle, Priority: clsactPrio, Protocol: unix.ETH_P_ALL}, Fd: prog.FD(), DirectAction: true}
		if err := nl.FilterReplace(flt); err != nil {
			t.Fatal(err)
		}
		if err := pinFD(prog.FD(), filepath.Join(l.a.opts.BPFRoot, "links", endpointPin(ifindex))); err != nil {
			t.Fatal(err)
		}
	}
	blockPins, _ := filepath.Glob(filepath.Join(l.a.opts.BPFRoot, "links", blockPinPrefix+"*"))
	for _, p := range blockPins {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.a.ping(l.b.ep.Addr.Addr(), 1); err != nil {
		t.Fatalf("older agent's set-up: %v", err)
	}
	downs := l.watchDowns()
	l.upgrade(nil)
	l.expectShared(t, l.a, l.b)
	// Each veth was down while its qdisc was made again: no packet of the
	// sandbox's reached the host stack without the program.
	went := downs(l.a.ep.HostIfName, l.b.ep.HostIfName)
	for _, h := range []*overlayHost{l.a, l.b} {
		if !went[h.ep.HostIfName] {
			t.Errorf("host veth %s was not set down while its qdisc was replaced (downs seen: %v)", h.ep.HostIfName, went)
		}
	}
	if err := l.a.ping(l.b.ep.Addr.Addr(), 1); err != nil {
		t.Fatal(err)
	}
}

// TestEndpointBlockAvoidsBlocksInUse: a datapath on another bpf root in
// the same namespace never takes a block index a qdisc there is bound
// to, the first datapath's included.
func TestEndpointBlockAvoidsBlocksInUse(t *testing.T) {
	l := newUpgradeLab(t)
	sock, err := openTCSock(l.a.path)
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	root := filepath.Join("/sys/fs/bpf", netnstest.UniqueName("fabric-test-"))
	// The index a datapath on root would take first, made busy.
	busy := fnv32("fabric-endpoints:"+root) &^ 1
	la := netlink.NewLinkAttrs()
	la.Name = netnstest.UniqueName("fbq")
	nl := netnstest.Handle(t, l.a.path)
	defer nl.Close()
	if err := nl.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: la.Name + "p"}); err != nil {
		t.Fatal(err)
	}
	dev, err := nl.LinkByName(la.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := sock.addClsact(dev.Attrs().Index, busy+1, busy+100); err != nil {
		t.Fatal(err)
	}
	f := &Forwarder{opts: Options{BPFRoot: root}, tc: sock}
	b, err := f.endpointBlock()
	if err != nil {
		t.Fatal(err)
	}
	first := l.a.dp.fwd.epBlock
	for _, used := range []uint32{busy + 1, busy + 100, first, first + 1} {
		if b == used || b+1 == used {
			t.Errorf("blocks %d/%d chosen, but %d is in use", b, b+1, used)
		}
	}
	if b%2 != 0 || b == 0 {
		t.Errorf("block %d: want an even non-zero index", b)
	}
	t.Logf("first datapath's blocks %d/%d, second's %d/%d", first, first+1, b, b+1)
}

// TestPurgeTakesEndpointsOffTheBlock: the purge of a stopped agent
// deletes the qdiscs bound to the endpoints' block, so the block and its
// filter go (even from veths it does not delete).
func TestPurgeTakesEndpointsOffTheBlock(t *testing.T) {
	l := newUpgradeLab(t)
	blk := l.a.dp.fwd.epBlock
	if err := l.a.dp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := purgeBlock(l.a.path, blk); err != nil {
		t.Fatal(err)
	}
	for _, h := range []*overlayHost{l.a, l.b} {
		if c, ok := clsactIn(t, l.a.path, l.hostIfindex(h)); ok {
			t.Errorf("%s keeps clsact %v after the purge", h.ep.HostIfName, c)
		}
	}
	if n := len(blockFilters(t, l.a.path, blk)); n != 0 {
		t.Errorf("%d filters left on block %d", n, blk)
	}
}

// watchDowns records which links of the lab's host namespace are set down
// from now on; the function it returns waits (at most 5s) until each of
// want was seen going down, stops the watch and says which went down.
func (l *upgradeLab) watchDowns() func(want ...string) map[string]bool {
	l.t.Helper()
	ns, err := netns.GetFromPath(l.a.path)
	if err != nil {
		l.t.Fatal(err)
	}
	ch, done := make(chan netlink.LinkUpdate, 256), make(chan struct{})
	if err := netlink.LinkSubscribeAt(ns, ch, done); err != nil {
		ns.Close()
		l.t.Fatalf("subscribe to link updates: %v", err)
	}
	return func(want ...string) map[string]bool {
		defer ns.Close()
		defer close(done)
		went := map[string]bool{}
		timeout := time.After(5 * time.Second)
		for !allIn(want, went) {
			select {
			case u, ok := <-ch:
				if !ok {
					return went
				}
				if u.IfInfomsg.Flags&unix.IFF_UP == 0 {
					went[u.Link.Attrs().Name] = true
				}
			case <-timeout:
				return went
			}
		}
		return went
	}
}

func allIn(names []string, set map[string]bool) bool {
	for _, n := range names {
		if !set[n] {
			return false
		}
	}
	return true
}
