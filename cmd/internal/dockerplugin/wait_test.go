package dockerplugin

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// The wait for Docker's moves follows netlink events: it times out with
// an error naming what it waited for, checking only a handful of times
// while nothing changes (a poll every 5ms would check ~60 times in 300ms),
// and it returns once a link moved into the namespace after the wait began
// gets its address.
func TestWaitPeerFollowsNetlinkEvents(t *testing.T) {
	netnstest.RequireRoot(t)
	_, hostPath := netnstest.New(t, "fdwh")
	_, sbPath := netnstest.New(t, "fdws")
	hostH, sbH := netnstest.Handle(t, hostPath), netnstest.Handle(t, sbPath)
	host, peer := linkNames("dddddddddddd4444")
	addr := netip.MustParseAddr("10.65.0.7")
	err := netns.Do(hostPath, func() error {
		if err := makePair(host, peer, 0, net.HardwareAddr{2, 0xfa, 10, 65, 0, 7}); err != nil {
			return err
		}
		var checks atomic.Int32
		ready := func() bool { checks.Add(1); return peerReady(sbPath, host, addr) }

		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		err := waitEvents(ctx, sbPath, ready, "the test's peer")
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "the test's peer never appeared") {
			t.Errorf("wait with nothing happening: %v, want a timeout naming the peer", err)
		}
		if n := checks.Load(); n > 10 {
			t.Errorf("%d readiness checks in 300ms with nothing happening: the wait polls", n)
		}

		checks.Store(0)
		moved := make(chan error, 1)
		go func() { moved <- moveAndAddress(hostH, sbH, sbPath, peer, addr, &checks) }()
		ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		start := time.Now()
		if err := waitEvents(ctx, sbPath, ready, "the test's peer"); err != nil {
			t.Errorf("wait for a peer moved and addressed after it began: %v", err)
		}
		if err := <-moved; err != nil {
			t.Errorf("move and address %s: %v", peer, err)
		}
		t.Logf("ready %v after the wait began, %d checks", time.Since(start), checks.Load())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// moveAndAddress does what Docker does to the link it is handed, once the
// wait has made its first check: into the namespace, then an address.
func moveAndAddress(hostH, sbH *netlink.Handle, sbPath, peer string, addr netip.Addr, checks *atomic.Int32) error {
	if !netnstest.Poll(10*time.Second, func() bool { return checks.Load() > 0 }) {
		return errors.New("the wait never checked")
	}
	l, err := hostH.LinkByName(peer)
	if err != nil {
		return err
	}
	fd, err := os.Open(sbPath)
	if err != nil {
		return err
	}
	defer fd.Close()
	if err := hostH.LinkSetNsFd(l, int(fd.Fd())); err != nil {
		return err
	}
	l, err = sbH.LinkByName(peer)
	if err != nil {
		return err
	}
	return sbH.AddrAdd(l, &netlink.Addr{IPNet: netlink.NewIPNet(addr.AsSlice())})
}
