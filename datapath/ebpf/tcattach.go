package ebpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// tc attach modes. TCX links (Linux 6.6) are preferred; before that the
// programs run as clsact filters (Debian 12's 6.1, Ubuntu 22.04's 5.15).
const (
	modeTCX    = "tcx"
	modeClsact = "clsact"
)

// The clsact filter fabric owns on each hook: one priority and handle, so
// re-attaching replaces it in place (cls_bpf swaps the program atomically:
// no packet misses one) and nothing else's filters are touched.
const (
	clsactPrio   = 0xfab
	clsactHandle = 0xfab
)

// forceClsact makes attachTC use clsact on kernels with TCX too: the
// tests of the clsact path set it.
var forceClsact bool

// attachTC runs prog on ifindex's tc hook: through a pinned TCX link
// where the kernel has TCX, else through a clsact filter whose program is
// pinned at pin (the filter itself outlives the agent, as a link pin
// does, so a restart replaces the program without a gap). The mode is
// chosen once: the first attachment finds out, or a clsact pin a previous
// run left says so.
func (f *Forwarder) attachTC(pin string, ifindex int, prog *ebpf.Program, at ebpf.AttachType) error {
	if f.tcMode == "" && forceClsact {
		f.setTCMode(modeClsact, "forced (test)")
	}
	if f.tcMode == "" && isPinnedProgram(pin) {
		f.setTCMode(modeClsact, "a previous run attached through clsact")
	}
	if f.tcMode != modeClsact {
		err := f.attachTCX(pin, ifindex, prog, at)
		if err == nil {
			f.tcMode = modeTCX
			return nil
		}
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return err
		}
		f.setTCMode(modeClsact, err.Error())
	}
	return f.attachClsact(pin, ifindex, prog, at == ebpf.AttachTCXIngress)
}

func (f *Forwarder) setTCMode(mode, why string) {
	f.tcMode = mode
	f.log.Info("tc programs attach through "+mode, "why", why)
}

// tcModeLabel is the attach mode as status shows it.
func (f *Forwarder) tcModeLabel() string {
	if f.tcMode == modeClsact {
		return "clsact"
	}
	return "TCX"
}

// tcHook is the metrics' hook name prefix of the tc programs.
func (f *Forwarder) tcHook() string {
	if f.tcMode == modeClsact {
		return modeClsact
	}
	return modeTCX
}

func (f *Forwarder) attachClsact(pin string, ifindex int, prog *ebpf.Program, ingress bool) error {
	qd := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	// Add, never replace: replacing a clsact qdisc drops its filters.
	if err := f.nl.QdiscAdd(qd); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc to ifindex %d: %w", ifindex, err)
	}
	flt := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex, Parent: clsactParent(ingress), Handle: clsactHandle,
			Priority: clsactPrio, Protocol: unix.ETH_P_ALL,
		},
		Fd: prog.FD(), Name: "fabric-" + filepath.Base(pin), DirectAction: true,
	}
	if err := f.nl.FilterReplace(flt); err != nil {
		return fmt.Errorf("attach tc program to ifindex %d through clsact: %w", ifindex, err)
	}
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		return fmt.Errorf("pin %s: %w", pin, err)
	}
	if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("replace pin %s: %w", pin, err)
	}
	if err := pinFD(prog.FD(), pin); err != nil {
		return fmt.Errorf("pin %s: %w", pin, err)
	}
	return nil
}

func clsactParent(ingress bool) uint32 {
	if ingress {
		return netlink.HANDLE_MIN_INGRESS
	}
	return netlink.HANDLE_MIN_EGRESS
}

// detach removes what pin attaches: a TCX or XDP link, or a clsact
// filter (its program is what is pinned). A hook whose device is gone is
// already detached.
func (f *Forwarder) detach(pin string) error {
	p, err := ebpf.LoadPinnedProgram(pin, nil)
	if err != nil {
		return detach(pin)
	}
	defer p.Close()
	var id ebpf.ProgramID
	if info, err := p.Info(); err == nil {
		id, _ = info.ID()
	}
	if ifindex, ingress, ok := f.clsactTarget(filepath.Base(pin)); ok {
		if err := f.deleteClsactFilter(ifindex, ingress, id); err != nil {
			return err
		}
	}
	if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove pin %s: %w", pin, err)
	}
	return nil
}

// clsactTarget maps a pin's name to the hook it stands for.
func (f *Forwarder) clsactTarget(name string) (ifindex int, ingress, ok bool) {
	switch name {
	case pinUplinkIngress, pinUplinkEgress:
		return f.uplink.ifindex, name == pinUplinkIngress, f.uplink.ifindex != 0
	case pinTunnelIngress:
		l, err := f.nl.LinkByName(tunDevice)
		if err != nil {
			return 0, false, false
		}
		return l.Attrs().Index, true, true
	}
	if rest, found := strings.CutPrefix(name, "ep-"); found {
		if i, err := strconv.Atoi(rest); err == nil {
			return i, true, true
		}
	}
	return 0, false, false
}

// deleteClsactFilter removes fabric's filter from the hook if it still
// runs program id (0: whatever it runs).
func (f *Forwarder) deleteClsactFilter(ifindex int, ingress bool, id ebpf.ProgramID) error {
	l, err := f.nl.LinkByIndex(ifindex)
	if err != nil {
		return nil // the device, and its filters, are gone
	}
	filters, err := f.nl.FilterList(l, clsactParent(ingress))
	if err != nil {
		return nil // no clsact qdisc: nothing attached
	}
	for _, flt := range filters {
		b, ok := flt.(*netlink.BpfFilter)
		if !ok || b.Priority != clsactPrio || b.Handle != clsactHandle || (id != 0 && b.Id != int(id)) {
			continue
		}
		if err := f.nl.FilterDel(b); err != nil && !isLinkGone(err) {
			return fmt.Errorf("detach clsact filter from ifindex %d: %w", ifindex, err)
		}
	}
	return nil
}

func isPinnedProgram(pin string) bool {
	p, err := ebpf.LoadPinnedProgram(pin, nil)
	if err != nil {
		return false
	}
	p.Close()
	return true
}

// pinFD pins the object fd at path (BPF_OBJ_PIN). Program.Pin would move
// the program's one pin; one program runs on many hooks, each with a pin.
func pinFD(fd int, path string) error {
	name, err := unix.BytePtrFromString(path)
	if err != nil {
		return err
	}
	attr := struct {
		pathname uint64
		fd       uint32
		flags    uint32
	}{pathname: uint64(uintptr(unsafe.Pointer(name))), fd: uint32(fd)}
	const bpfObjPin = 6
	_, _, errno := unix.Syscall(unix.SYS_BPF, bpfObjPin, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return errno
	}
	return nil
}
