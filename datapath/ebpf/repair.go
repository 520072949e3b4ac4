package ebpf

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/bpf"
	"github.com/fabricnet/fabric/datapath"
)

// tcAttached reports whether prog runs on ifindex's tc hook the way
// attachTC puts it there (the TCX link pinned at pin, or fabric's clsact
// filter): an ensure then leaves it alone instead of swapping it in again.
func (f *Forwarder) tcAttached(pin string, ifindex int, prog *ebpf.Program, ingress bool) bool {
	id, ok := f.progID(prog)
	if !ok {
		return false
	}
	switch f.tcMode {
	case modeClsact:
		return f.clsactRuns(ifindex, id, ingress)
	case modeTCX:
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			return false
		}
		defer l.Close()
		li, err := l.Info()
		return err == nil && li.Program == id && li.TCX() != nil && int(li.TCX().Ifindex) == ifindex
	}
	return false // nothing attached yet: the mode is found by attaching
}

// clsactRuns reports whether fabric's clsact filter on ifindex's hook runs
// program id.
func (f *Forwarder) clsactRuns(ifindex int, id ebpf.ProgramID, ingress bool) bool {
	dev := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}
	return f.filterRuns(dev, clsactParent(ingress), id)
}

// filterRuns reports whether fabric's filter (its handle and priority) on
// dev's parent runs program id; dev is a device, or the tc block device
// with parent the block's index.
func (f *Forwarder) filterRuns(dev netlink.Link, parent uint32, id ebpf.ProgramID) bool {
	flts, err := f.nl.FilterList(dev, parent)
	if err != nil {
		return false
	}
	for _, fl := range flts {
		if b, ok := fl.(*netlink.BpfFilter); ok && b.Handle == clsactHandle && b.Priority == clsactPrio && b.Id == int(id) {
			return true
		}
	}
	return false
}

// ensureTC attaches prog like attachTC unless it is attached already;
// expected says it should have been (an attachment missing then is drift,
// counted as a repair).
func (f *Forwarder) ensureTC(pin string, ifindex int, prog *ebpf.Program, at ebpf.AttachType, expected bool) error {
	ingress := at == ebpf.AttachTCXIngress
	if f.tcAttached(pin, ifindex, prog, ingress) {
		return nil
	}
	if err := f.attachTC(pin, ifindex, prog, at); err != nil {
		return err
	}
	if expected {
		f.repairs.Add(f.log, datapath.RepairProgram, fmt.Sprintf("%s on ifindex %d", pin, ifindex))
	}
	return nil
}

// ensureUplinkAttached puts the uplink's tc programs back if something
// removed them (a Sync's check; attachUplink attached them at start).
func (f *Forwarder) ensureUplinkAttached() error {
	if !f.hasUp || f.up == nil {
		return nil
	}
	idx := f.uplink.ifindex
	var errs []error
	for _, a := range []struct {
		pin  string
		prog *ebpf.Program
		at   ebpf.AttachType
	}{
		{pinUplinkIngress, f.up.FromUplink(), ebpf.AttachTCXIngress},
		{pinUplinkEgress, f.up.ToUplink(), ebpf.AttachTCXEgress},
	} {
		if err := f.ensureTC(f.linkPin(a.pin), idx, a.prog, a.at, true); err != nil {
			errs = append(errs, fmt.Errorf("uplink %s: %w", f.uplink.name, err))
		}
	}
	return errors.Join(errs...)
}

// putRemotes writes the entries of want that the map lacks or holds
// differently (have), and counts as repairs those that were written
// before (a Sync found them removed or changed by hand).
func (f *Forwarder) putRemotes(want map[netip.Addr]bpf.Remote, have []bpf.Remote) error {
	had := make(map[netip.Addr]bpf.Remote, len(have))
	var id bpf.NetID
	for _, r := range want {
		id = r.Network
		break
	}
	for _, r := range have {
		if r.Network == id {
			had[r.Addr] = r
		}
	}
	for a, r := range want {
		if h, ok := had[a]; ok && h.Node == r.Node && bytes.Equal(h.MAC, r.MAC) {
			continue
		}
		if err := f.objs.PutRemote(r); err != nil {
			return err
		}
		k := remoteKey{r.Network, a}
		if w, ok := f.written[k]; ok && w.Node == r.Node && bytes.Equal(w.MAC, r.MAC) {
			f.repairs.Add(f.log, datapath.RepairForward, fmt.Sprintf("remotes map %s -> node %s", a, r.Node))
		}
		f.written[k] = r
	}
	return nil
}

type remoteKey struct {
	net  bpf.NetID
	addr netip.Addr
}

// endpointIntact reports whether the programs serve endpoint id on host
// veth ifindex as its last EnsureEndpoint left them, and puts its tc
// program back if something detached it (a repair). A repair pass skips
// the full ensure of an intact endpoint.
func (f *Forwarder) endpointIntact(id string, ifindex int) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.eps[id]
	if !ok || st.ifindex != ifindex || !st.attached {
		return false, nil
	}
	return true, f.ensureEndpointTC(ifindex, true)
}

// progID is prog's kernel ID, asked once per program (a repair pass asks
// for every endpoint).
func (f *Forwarder) progID(prog *ebpf.Program) (ebpf.ProgramID, bool) {
	if id, ok := f.progIDs[prog]; ok {
		return id, true
	}
	info, err := prog.Info()
	if err != nil {
		return 0, false
	}
	id, ok := info.ID()
	if ok {
		if f.progIDs == nil {
			f.progIDs = map[*ebpf.Program]ebpf.ProgramID{}
		}
		f.progIDs[prog] = id
	}
	return id, ok
}
