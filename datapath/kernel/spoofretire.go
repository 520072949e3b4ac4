package kernel

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/fabricnet/fabric/datapath"
)

// Removing set elements costs the kernel an RCU grace period per batch,
// whatever its size (3–15 ms here, against 0.4 ms to add one), and every
// other nftables change in the namespace waits for it. It was most of a
// sandbox removal on this datapath. The elements of endpoints deleted
// with their namespace are therefore removed together, once no endpoint
// was deleted for spoofRetireQuiet (a burst of removals pays once, after
// it, not in the middle of the creates around it), and at the latest
// spoofRetireMaxWait after the first of them.
const (
	spoofRetireQuiet   = 200 * time.Millisecond
	spoofRetireMaxWait = 2 * time.Second
)

// spoofRetire schedules the removal of ep's elements. ep was deleted with
// NamespaceGoes: its port is down and goes with the namespace, so its
// elements, which allow nothing on any other port, may stay a moment.
// Under d.mu.
func (d *Datapath) spoofRetire(ep datapath.Endpoint) {
	e, ok := d.spoof[ep.HostIfName]
	if !ok {
		return
	}
	now := time.Now()
	if len(d.spoofRetired) == 0 {
		d.spoofRetired = map[string]spoofElem{}
		d.spoofRetiredAt = now
	}
	d.spoofRetired[e.port] = e
	wait := min(spoofRetireQuiet, spoofRetireMaxWait-now.Sub(d.spoofRetiredAt))
	if d.spoofTimer != nil {
		d.spoofTimer.Reset(wait)
		return
	}
	d.spoofTimer = time.AfterFunc(wait, func() {
		_ = d.locked(func() error {
			if err := d.spoofFlush(); err != nil {
				d.log.Warn("cannot remove the anti-spoofing elements of deleted endpoints; the next Sync does", "err", err)
			}
			return nil
		})
	})
}

// spoofTakeRetired returns the retired elements and forgets them (a Sync
// removes them with its own change). Under d.mu.
func (d *Datapath) spoofTakeRetired() map[string]spoofElem {
	if d.spoofTimer != nil {
		d.spoofTimer.Stop()
		d.spoofTimer = nil
	}
	r := d.spoofRetired
	d.spoofRetired = nil
	return r
}

// spoofFlush removes the retired elements the table still holds, in one
// batch. Under d.mu.
func (d *Datapath) spoofFlush() error {
	retired := d.spoofTakeRetired()
	var del []spoofElem
	for _, port := range slices.Sorted(maps.Keys(retired)) {
		if e := retired[port]; d.spoof[port] == e {
			del = append(del, e)
		}
	}
	if len(del) == 0 {
		return nil
	}
	if err := d.spoofChange(nil, del); err != nil {
		return fmt.Errorf("anti-spoofing elements of %d deleted endpoints: %w", len(del), err)
	}
	return nil
}
