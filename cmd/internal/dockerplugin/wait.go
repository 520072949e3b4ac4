package dockerplugin

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/fabricnet/fabric/datapath/netns"
)

// Waiting for Docker. Docker moves the end of the pair Join handed it out
// of the host's namespace into the container's, renames it and gives it
// its address; each step is a netlink event, in the host's namespace (the
// end leaves it) or in the container's (the link arrives, the address is
// added). So the wait listens to those events instead of polling: it
// subscribes, then checks, then checks again on each event, so a step
// taken before the subscription is not missed. A namespace that only
// appears (nothing moved into it: macvlan and ipvlan endpoints, which
// fabric makes itself) sends no netlink event; that wait, and the one
// after a subscription fails, polls with a backoff.

// pollMin and pollMax bound the backoff of the polling fallback.
const (
	pollMin = 5 * time.Millisecond
	pollMax = 100 * time.Millisecond
)

// nlWatch wakes a waiter on every link or address change in one
// namespace.
type nlWatch struct {
	wake   chan struct{} // one pending wake-up at most
	done   chan struct{}
	wg     sync.WaitGroup
	broken atomic.Bool // a subscription ended before Close: events may be lost
	once   sync.Once
}

// watchNetlink subscribes to link and address changes in the namespace at
// path, or in the caller's namespace if path is "".
func watchNetlink(path string) (w *nlWatch, err error) {
	w = &nlWatch{wake: make(chan struct{}, 1), done: make(chan struct{})}
	defer func() {
		if err != nil {
			w.Close()
		}
	}()
	var ns *vnetns.NsHandle
	if path != "" {
		h, err := vnetns.GetFromPath(path)
		if err != nil {
			return w, fmt.Errorf("open netns %s: %w", path, err)
		}
		defer h.Close() // the sockets keep the namespace
		ns = &h
	}
	links := make(chan netlink.LinkUpdate, 16)
	if err := netlink.LinkSubscribeWithOptions(links, w.done, netlink.LinkSubscribeOptions{Namespace: ns}); err != nil {
		return w, fmt.Errorf("subscribe to links in %q: %w", path, err)
	}
	forward(w, links)
	addrs := make(chan netlink.AddrUpdate, 16)
	if err := netlink.AddrSubscribeWithOptions(addrs, w.done, netlink.AddrSubscribeOptions{Namespace: ns}); err != nil {
		return w, fmt.Errorf("subscribe to addresses in %q: %w", path, err)
	}
	forward(w, addrs)
	return w, nil
}

// forward turns a subscription's updates into wake-ups until the channel
// is closed (by Close, or by the subscription failing).
func forward[T any](w *nlWatch, ch <-chan T) {
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		for range ch {
			w.notify()
		}
		select {
		case <-w.done:
		default:
			w.broken.Store(true)
			w.notify()
		}
	}()
}

func (w *nlWatch) notify() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Close ends the subscriptions and waits for their goroutines (closing
// done closes the sockets; the library then closes the channels).
func (w *nlWatch) Close() {
	w.once.Do(func() { close(w.done) })
	w.wg.Wait()
}

// waitPeer waits until Docker has moved the other end of the host veth
// into the namespace at key and given it addr, or ctx ends.
func waitPeer(ctx context.Context, key, host string, addr netip.Addr) error {
	return waitEvents(ctx, key, func() bool { return peerReady(key, host, addr) },
		fmt.Sprintf("namespace %s with %s's peer addressed %s", key, host, addr))
}

// waitEvents checks ready once subscribed to the caller's namespace, and
// to the one at key as soon as it exists, and again on every event there,
// until it holds or ctx ends. what names the awaited thing in the error.
func waitEvents(ctx context.Context, key string, ready func() bool, what string) error {
	hostW, err := watchNetlink("")
	if err != nil {
		return pollUntil(ctx, ready, fmt.Sprintf("%s (%v; polled)", what, err))
	}
	defer hostW.Close()
	var nsW *nlWatch
	defer func() {
		if nsW != nil {
			nsW.Close()
		}
	}()
	var nsWake <-chan struct{}
	for {
		if nsW == nil && netns.IsNamespace(key) {
			if nsW, err = watchNetlink(key); err != nil {
				nsW = nil
				return pollUntil(ctx, ready, fmt.Sprintf("%s (%v; polled)", what, err))
			}
			nsWake = nsW.wake
		}
		if ready() {
			return nil
		}
		if hostW.broken.Load() || (nsW != nil && nsW.broken.Load()) {
			return pollUntil(ctx, ready, what+" (netlink events lost; polled)")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s never appeared: %w", what, ctx.Err())
		case <-hostW.wake:
		case <-nsWake:
		}
	}
}

// waitNamespace waits until a network namespace is mounted at key.
func waitNamespace(ctx context.Context, key string) error {
	return pollUntil(ctx, func() bool { return netns.IsNamespace(key) }, "namespace "+key)
}

// pollUntil checks ready with a backoff from pollMin to pollMax until it
// holds or ctx ends; what names the awaited thing in the error.
func pollUntil(ctx context.Context, ready func() bool, what string) error {
	d := pollMin
	t := time.NewTimer(d)
	defer t.Stop()
	for !ready() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s never appeared: %w", what, ctx.Err())
		case <-t.C:
		}
		d = min(2*d, pollMax)
		t.Reset(d)
	}
	return nil
}
