package plumb

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
)

// WatchLinks signals on the returned channel (buffered, one pending
// signal at most) each time a link marked as fabric's is deleted from the
// host namespace, until ctx ends: a repair pass can then run at once
// instead of at the next interval. The endpoint veths this Host deletes
// itself (DeleteVeth) do not signal: a pass after them would find nothing
// to do, and it walks every endpoint under the agent's lock, so with one
// after each sandbox removal the next set-up waited longer the more
// sandboxes there were.
func (h *Host) WatchLinks(ctx context.Context) (<-chan struct{}, error) {
	updates := make(chan netlink.LinkUpdate, 64)
	ns := h.hostNS
	err := netlink.LinkSubscribeWithOptions(updates, ctx.Done(), netlink.LinkSubscribeOptions{
		Namespace:     &ns,
		ErrorCallback: func(err error) { h.log.Debug("link events", "err", err) },
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to link events: %w", err)
	}
	out := make(chan struct{}, 1)
	go func() {
		defer close(out)
		for u := range updates { // closed by the library once ctx ends
			if u.Header.Type != unix.RTM_DELLINK || !strings.HasPrefix(u.Attrs().Alias, datapath.OwnerPrefix) {
				continue
			}
			if h.own.take(u.Attrs().Index) {
				continue
			}
			select {
			case out <- struct{}{}:
			default:
			}
		}
	}()
	return out, nil
}

// ownDeletes remembers, by ifindex, the links a Host is deleting, until
// their deletion event is seen; entries whose event never came (the
// watcher was not running) are dropped after ownDeleteTTL.
type ownDeletes struct {
	mu    sync.Mutex
	since map[int]time.Time
}

const ownDeleteTTL = time.Minute

func (o *ownDeletes) add(ifindex int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now()
	if o.since == nil {
		o.since = map[int]time.Time{}
	}
	for i, t := range o.since {
		if now.Sub(t) > ownDeleteTTL {
			delete(o.since, i)
		}
	}
	o.since[ifindex] = now
}

// take reports whether ifindex was being deleted by the Host, and forgets
// it.
func (o *ownDeletes) take(ifindex int) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, ok := o.since[ifindex]
	delete(o.since, ifindex)
	return ok
}
