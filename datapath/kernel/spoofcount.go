package kernel

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// spoofReason is the reason the anti-spoofing table's drops are reported
// under. The table has one drop rule for everything a sandbox may not send
// (another address, another MAC, a forged ARP sender, a frame not IPv4 or
// ARP), so its drops are one counter where the eBPF datapath tells
// spoofed-ip from spoofed-mac; the direction and verdict are the eBPF
// datapath's, so one query sees spoofing drops on either.
const spoofReason = "spoofed"

// spoofDrops reads the anti-spoofing drop rule's counter. ok is false when
// the table or its chain is not there (no bridge endpoint yet). The count
// starts again from zero when Sync rebuilds the table. d.mu is held.
func (d *Datapath) spoofDrops() (c datapath.Counter, ok bool, err error) {
	rules, err := d.nft.GetRules(spoofTable, &nftables.Chain{Name: spoofChainEp, Table: spoofTable})
	if errors.Is(err, unix.ENOENT) {
		return c, false, nil
	}
	if err != nil {
		return c, false, fmt.Errorf("list chain %s of table bridge %s: %w", spoofChainEp, plumb.NFTable, err)
	}
	c = datapath.Counter{Direction: "from-endpoint", Verdict: "drop", Reason: spoofReason}
	for _, r := range rules {
		var ctr *expr.Counter
		drop := false
		for _, e := range r.Exprs {
			switch e := e.(type) {
			case *expr.Counter:
				ctr = e
			case *expr.Verdict:
				drop = e.Kind == expr.VerdictDrop
			}
		}
		if ctr != nil && drop {
			c.Packets += ctr.Packets
			c.Bytes += ctr.Bytes
			ok = true
		}
	}
	return c, ok, nil
}
