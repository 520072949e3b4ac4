package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	fabricns "github.com/fabricnet/fabric/datapath/netns"
)

// tcAttachment is a test's tc program on one hook.
type tcAttachment struct{ close func() error }

func (a tcAttachment) Close() error { return a.close() }

// attachTC attaches prog to ifindex in the namespace at path: a TCX link
// where the kernel has TCX, else a clsact filter (Linux before 6.6), so
// the programs are tested on the kernels users run.
func attachTC(path string, ifindex int, prog *ebpf.Program, at ebpf.AttachType) (tcAttachment, error) {
	var a tcAttachment
	err := fabricns.Do(path, func() error {
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: at})
		if err == nil {
			a.close = l.Close
			return nil
		}
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return err
		}
		qd := &netlink.GenericQdisc{
			QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
			QdiscType:  "clsact",
		}
		if err := netlink.QdiscAdd(qd); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("clsact on %d: %w", ifindex, err)
		}
		parent := uint32(netlink.HANDLE_MIN_INGRESS)
		if at == ebpf.AttachTCXEgress {
			parent = netlink.HANDLE_MIN_EGRESS
		}
		flt := &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: parent, Handle: 1, Priority: 1, Protocol: unix.ETH_P_ALL},
			Fd:          prog.FD(), Name: "fabric-test", DirectAction: true,
		}
		if err := netlink.FilterAdd(flt); err != nil {
			return fmt.Errorf("clsact filter on %d: %w", ifindex, err)
		}
		a.close = func() error { return fabricns.Do(path, func() error { return netlink.FilterDel(flt) }) }
		return nil
	})
	return a, err
}
