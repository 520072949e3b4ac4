package ebpf

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
)

// Endpoint hooks on shared tc blocks. Every endpoint's host veth gets a
// clsact qdisc bound to two shared blocks of fabric's (ingress block N,
// egress block N+1), and the endpoint program runs once, as a filter on
// block N (it finds its endpoint by skb->ingress_ifindex). A clsact qdisc
// with private blocks would add two entries to a kernel-wide list
// (flow_indir_dev_list) that every later qdisc creation walks: the
// set-up of an endpoint would grow with the number of endpoints. A
// shared block has one entry whatever the number of qdiscs bound to it.
//
// Blocks are per network namespace and disappear with their last qdisc
// (and the filter with them): the filter is attached again whenever the
// block is found without it. The program is pinned at
// links/endpoint-block-N, which also records which N this bpf root owns,
// so a restart adopts the same blocks and swaps its program into the
// filter in place (cls_bpf replaces it atomically: no packet misses one).

const blockPinPrefix = "endpoint-block-"

// endpointBlock is the ingress block index of this bpf root's endpoints
// (the egress block is the next one), chosen once: the one a pin records,
// else one derived from the bpf root that no qdisc in the namespace uses
// (two datapaths in one namespace, as in tests, have different roots).
func (f *Forwarder) endpointBlock() (uint32, error) {
	if f.epBlock != 0 {
		return f.epBlock, nil
	}
	if b, ok := f.pinnedBlock(); ok {
		f.epBlock = b
		return b, nil
	}
	qds, err := f.tc.clsacts()
	if err != nil {
		return 0, err
	}
	used := map[uint32]bool{}
	for _, q := range qds {
		used[q.ingress], used[q.egress] = true, true
	}
	b := fnv32("fabric-endpoints:"+f.opts.BPFRoot) &^ 1
	for range 1024 {
		if b == 0 || b == 0xFFFFFFFE {
			b = 2
		}
		if !used[b] && !used[b+1] {
			f.epBlock = b
			return b, nil
		}
		b += 2
	}
	return 0, errors.New("no free tc block index for endpoints in 1024 tries")
}

// pinnedBlock is the block a previous run's pin records.
func (f *Forwarder) pinnedBlock() (uint32, bool) {
	names, _ := filepath.Glob(filepath.Join(f.opts.BPFRoot, "links", blockPinPrefix+"*"))
	slices.Sort(names)
	for _, n := range names {
		if b, ok := blockOfPin(filepath.Base(n)); ok {
			return b, true
		}
	}
	return 0, false
}

func blockOfPin(name string) (uint32, bool) {
	rest, ok := strings.CutPrefix(name, blockPinPrefix)
	if !ok {
		return 0, false
	}
	b, err := strconv.ParseUint(rest, 10, 32)
	return uint32(b), err == nil && b != 0
}

// ensureEndpointTC makes host veth ifindex run the endpoint program: its
// clsact qdisc bound to fabric's blocks, the program's filter on the
// ingress block. expected says it ran there before: anything missing now
// is drift, counted as a repair. A private clsact qdisc (an older agent's
// per-veth filter, or someone else's) is replaced by a bound one; an
// older agent's per-veth pin goes, and its TCX link is let go once the
// block's filter runs.
func (f *Forwarder) ensureEndpointTC(ifindex int, expected bool) error {
	if f.tcMode == "" && forceClsact {
		f.setTCMode(modeClsact, "forced (test)")
	}
	blk, err := f.endpointBlock()
	if err != nil {
		return err
	}
	fixed, attached, err := f.ensureBoundQdisc(ifindex, blk)
	if err != nil {
		return err
	}
	pin := f.linkPin(endpointPin(ifindex))
	if err := f.dropLegacyPin(pin); err != nil {
		return err
	}
	if expected && (fixed || attached) {
		f.repairs.Add(f.log, datapath.RepairProgram, fmt.Sprintf("endpoint program on ifindex %d (tc block %d)", ifindex, blk))
	}
	return nil
}

// ensureBoundQdisc gives ifindex a clsact qdisc bound to blocks blk and
// blk+1 and makes sure the block's filter runs; made reports that there
// was no such qdisc, attached that the filter was not there.
func (f *Forwarder) ensureBoundQdisc(ifindex int, blk uint32) (made, attached bool, err error) {
	err = f.tc.addClsact(ifindex, blk, blk+1)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return false, false, fmt.Errorf("add clsact qdisc on tc blocks %d/%d to ifindex %d: %w", blk, blk+1, ifindex, err)
	}
	if err == nil {
		attached, err = f.ensureBlockFilter(blk)
		return true, attached, err
	}
	c, ok, err := f.tc.clsactOf(ifindex)
	if err != nil {
		return false, false, err
	}
	if ok && c.ingress == blk && c.egress == blk+1 {
		attached, err = f.ensureBlockFilter(blk)
		return false, attached, err
	}
	attached, err = f.rebindQdisc(ifindex, blk)
	return true, attached, err
}

// rebindQdisc replaces ifindex's clsact qdisc with private blocks (an
// older agent's per-veth filter, or someone else's) by one bound to blk.
// Blocks cannot be changed on a qdisc, so it is made again; the veth is
// down meanwhile, so none of the sandbox's packets reaches the host stack
// without the program (the sandbox sees its link flap once, on the
// upgrade from per-veth filters).
func (f *Forwarder) rebindQdisc(ifindex int, blk uint32) (attached bool, err error) {
	l, err := f.nl.LinkByIndex(ifindex)
	if err != nil {
		return false, fmt.Errorf("replace clsact qdisc of ifindex %d: %w", ifindex, err)
	}
	if l.Attrs().Flags&net.FlagUp != 0 {
		if err := f.nl.LinkSetDown(l); err != nil {
			return false, fmt.Errorf("replace clsact qdisc of %s: set down: %w", l.Attrs().Name, err)
		}
		defer func() {
			if uerr := f.nl.LinkSetUp(l); uerr != nil {
				err = errors.Join(err, fmt.Errorf("replace clsact qdisc of %s: set up again: %w", l.Attrs().Name, uerr))
			}
		}()
	}
	if err := f.tc.delClsact(ifindex); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return false, fmt.Errorf("replace clsact qdisc of ifindex %d: %w", ifindex, err)
	}
	if err := f.tc.addClsact(ifindex, blk, blk+1); err != nil {
		return false, fmt.Errorf("add clsact qdisc on tc blocks %d/%d to ifindex %d: %w", blk, blk+1, ifindex, err)
	}
	return f.ensureBlockFilter(blk)
}

// ensureBlockFilter attaches the endpoint program as fabric's filter on
// block blk unless it runs there already (attached reports it did not).
func (f *Forwarder) ensureBlockFilter(blk uint32) (attached bool, err error) {
	prog := f.objs.FromEndpoint()
	id, ok := f.progID(prog)
	if ok && f.blockRuns(blk, id) {
		return false, nil
	}
	flt := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: tcmIfindexMagicBlock, Parent: blk, Handle: clsactHandle,
			Priority: clsactPrio, Protocol: unix.ETH_P_ALL,
		},
		Fd: prog.FD(), Name: "fabric-endpoints", DirectAction: true,
	}
	if err := f.nl.FilterReplace(flt); err != nil {
		return false, fmt.Errorf("attach endpoint program to tc block %d: %w", blk, err)
	}
	pin := f.linkPin(fmt.Sprintf("%s%d", blockPinPrefix, blk))
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		return false, fmt.Errorf("pin %s: %w", pin, err)
	}
	if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("replace pin %s: %w", pin, err)
	}
	if err := pinFD(prog.FD(), pin); err != nil {
		return false, fmt.Errorf("pin %s: %w", pin, err)
	}
	// A block this root used before (its pin lost, another index chosen)
	// goes with its last qdisc: its pin must not be adopted next start.
	others, _ := filepath.Glob(filepath.Join(filepath.Dir(pin), blockPinPrefix+"*"))
	for _, o := range others {
		if o != pin {
			_ = os.Remove(o)
		}
	}
	return true, nil
}

// blockRuns reports whether fabric's filter on block blk runs program id.
func (f *Forwarder) blockRuns(blk uint32, id ebpf.ProgramID) bool {
	return f.filterRuns(blockDev(), blk, id)
}

// dropLegacyPin removes what an older agent pinned for one endpoint veth:
// a program (its per-veth filter went with the private qdisc) or a TCX
// link, detached now that the block's filter runs.
func (f *Forwarder) dropLegacyPin(pin string) error {
	if old, err := link.LoadPinnedLink(pin, nil); err == nil {
		defer old.Close()
		if err := old.Unpin(); err != nil {
			return fmt.Errorf("unpin %s: %w", pin, err)
		}
		if err := old.Detach(); err != nil && !errors.Is(err, unix.ENOLINK) && !errors.Is(err, os.ErrNotExist) {
			f.log.Warn("detach an older agent's TCX link", "pin", pin, "err", err)
		}
		return nil
	}
	if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove pin %s: %w", pin, err)
	}
	return nil
}

// detachEndpointTC takes the endpoint program off host veth ifindex: its
// clsact qdisc if bound to fabric's blocks, and what an older agent
// pinned for it.
func (f *Forwarder) detachEndpointTC(ifindex int) error {
	if err := f.detach(f.linkPin(endpointPin(ifindex))); err != nil {
		return err
	}
	if f.epBlock == 0 {
		if _, ok := f.pinnedBlock(); !ok {
			return nil // nothing bound to a block of ours yet
		}
	}
	blk, err := f.endpointBlock()
	if err != nil {
		return err
	}
	c, ok, err := f.tc.clsactOf(ifindex)
	if err != nil || !ok || c.ingress != blk {
		return err
	}
	if err := f.tc.delClsact(ifindex); err != nil && !isLinkGone(err) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("detach endpoint program from ifindex %d: %w", ifindex, err)
	}
	return nil
}

// pruneBlockQdiscs detaches the endpoint program from the veths bound to
// fabric's block that keep lacks (a Sync's check: endpoints gone while
// the agent was down).
func (f *Forwarder) pruneBlockQdiscs(keep map[int]bool) error {
	blk := f.epBlock
	if blk == 0 {
		var ok bool
		if blk, ok = f.pinnedBlock(); !ok {
			return nil // no endpoint was ever bound to a block of this bpf root
		}
	}
	qds, err := f.tc.clsacts()
	if err != nil {
		return err
	}
	var errs []error
	for _, q := range qds {
		if q.ingress != blk || keep[q.ifindex] {
			continue
		}
		if err := f.tc.delClsact(q.ifindex); err != nil && !isLinkGone(err) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("detach endpoint program from ifindex %d: %w", q.ifindex, err))
		}
	}
	return errors.Join(errs...)
}
