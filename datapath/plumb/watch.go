package plumb

import (
	"context"
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
)

// WatchLinks signals on the returned channel (buffered, one pending
// signal at most) each time a link marked as fabric's is deleted from the
// host namespace, until ctx ends: a repair pass can then run at once
// instead of at the next interval. Deletions fabric makes itself signal
// too; a pass after them finds nothing to do.
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
			select {
			case out <- struct{}{}:
			default:
			}
		}
	}()
	return out, nil
}
