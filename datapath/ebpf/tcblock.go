package ebpf

import (
	"errors"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The netlink messages of shared tc blocks that vishvananda/netlink does
// not build or parse: a clsact qdisc bound to an egress block too, and the
// block indices a qdisc reports. Filters on a block go through the library
// (a filter addressed by tcm_ifindex = TCM_IFINDEX_MAGIC_BLOCK and the
// block index in tcm_parent).

// tcmIfindexMagicBlock in tcm_ifindex says tcm_parent is a block index.
const tcmIfindexMagicBlock = 0xFFFFFFFF

// blockDev addresses the filters of shared block index.
func blockDev() netlink.Link {
	return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: tcmIfindexMagicBlock}}
}

// clsactInfo is a clsact qdisc and the shared blocks it is bound to (0:
// a private block).
type clsactInfo struct {
	ifindex         int
	ingress, egress uint32
}

// tcSock is a rtnetlink socket in the host namespace for those messages.
type tcSock struct {
	sh *nl.SocketHandle
}

func openTCSock(nsPath string) (*tcSock, error) {
	ns, err := vnetns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	defer ns.Close()
	s, err := nl.GetNetlinkSocketAt(ns, vnetns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("rtnetlink socket in %s: %w", nsPath, err)
	}
	// Never wait for ever on an answer that does not come.
	tv := unix.NsecToTimeval((10 * time.Second).Nanoseconds())
	if err := s.SetReceiveTimeout(&tv); err != nil {
		s.Close()
		return nil, fmt.Errorf("rtnetlink socket timeout: %w", err)
	}
	return &tcSock{sh: &nl.SocketHandle{Socket: s}}, nil
}

func (s *tcSock) Close() {
	if s != nil && s.sh != nil {
		s.sh.Close()
		s.sh = nil
	}
}

func (s *tcSock) request(typ, flags int, msg *nl.TcMsg) *nl.NetlinkRequest {
	req := &nl.NetlinkRequest{
		NlMsghdr: unix.NlMsghdr{Len: uint32(unix.SizeofNlMsghdr), Type: uint16(typ), Flags: unix.NLM_F_REQUEST | uint16(flags)},
		Sockets:  map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: s.sh},
	}
	req.AddData(msg)
	return req
}

func clsactMsg(ifindex int) *nl.TcMsg {
	return &nl.TcMsg{Family: unix.AF_UNSPEC, Ifindex: int32(ifindex), Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}
}

// addClsact creates ifindex's clsact qdisc bound to the shared blocks
// ingress and egress, so the kernel makes no private block for it. It
// fails with EEXIST if the device has a clsact qdisc already.
func (s *tcSock) addClsact(ifindex int, ingress, egress uint32) error {
	req := s.request(unix.RTM_NEWQDISC, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK, clsactMsg(ifindex))
	req.AddData(nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated("clsact")))
	req.AddData(nl.NewRtAttr(nl.TCA_INGRESS_BLOCK, nl.Uint32Attr(ingress)))
	req.AddData(nl.NewRtAttr(nl.TCA_EGRESS_BLOCK, nl.Uint32Attr(egress)))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// delClsact deletes ifindex's clsact qdisc (and the filters of its
// private blocks, if it has any).
func (s *tcSock) delClsact(ifindex int) error {
	req := s.request(unix.RTM_DELQDISC, unix.NLM_F_ACK, clsactMsg(ifindex))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// clsactOf is ifindex's clsact qdisc, asked for that device alone (no dump
// of the namespace's qdiscs). ok is false if the device has none.
func (s *tcSock) clsactOf(ifindex int) (c clsactInfo, ok bool, err error) {
	msg := &nl.TcMsg{Family: unix.AF_UNSPEC, Ifindex: int32(ifindex), Parent: netlink.HANDLE_CLSACT}
	// NLM_F_ECHO: recent kernels' tc_get_qdisc answers a plain get only
	// when someone listens to tc notifications; NLM_F_ACK: a device
	// without a qdisc there (the built-in noop one) gets no answer but
	// the ack (an answer's ack is skipped by the next request).
	msgs, err := s.request(unix.RTM_GETQDISC, unix.NLM_F_ECHO|unix.NLM_F_ACK, msg).Execute(unix.NETLINK_ROUTE, unix.RTM_NEWQDISC)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.EINVAL) {
		return clsactInfo{}, false, nil
	}
	if err != nil {
		return clsactInfo{}, false, fmt.Errorf("get clsact qdisc of ifindex %d: %w", ifindex, err)
	}
	for _, m := range msgs {
		if c, ok := parseClsact(m); ok {
			return c, true, nil
		}
	}
	return clsactInfo{}, false, nil
}

// clsacts lists the namespace's clsact qdiscs (a dump of every qdisc:
// for a start or a Sync, not for one endpoint).
func (s *tcSock) clsacts() ([]clsactInfo, error) {
	var out []clsactInfo
	for range 5 {
		out = out[:0]
		msg := &nl.TcMsg{Family: unix.AF_UNSPEC}
		msgs, err := s.request(unix.RTM_GETQDISC, unix.NLM_F_DUMP, msg).Execute(unix.NETLINK_ROUTE, unix.RTM_NEWQDISC)
		if errors.Is(err, nl.ErrDumpInterrupted) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list qdiscs: %w", err)
		}
		for _, m := range msgs {
			if c, ok := parseClsact(m); ok {
				out = append(out, c)
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("list qdiscs: %w", nl.ErrDumpInterrupted)
}

func parseClsact(m []byte) (clsactInfo, bool) {
	if len(m) < nl.SizeofTcMsg {
		return clsactInfo{}, false
	}
	msg := nl.DeserializeTcMsg(m)
	attrs, err := nl.ParseRouteAttr(m[nl.SizeofTcMsg:])
	if err != nil {
		return clsactInfo{}, false
	}
	c := clsactInfo{ifindex: int(msg.Ifindex)}
	kind := ""
	for _, a := range attrs {
		switch a.Attr.Type {
		case nl.TCA_KIND:
			if n := len(a.Value); n > 0 {
				kind = string(a.Value[:n-1])
			}
		case nl.TCA_INGRESS_BLOCK:
			if len(a.Value) >= 4 {
				c.ingress = native.Uint32(a.Value)
			}
		case nl.TCA_EGRESS_BLOCK:
			if len(a.Value) >= 4 {
				c.egress = native.Uint32(a.Value)
			}
		}
	}
	return c, kind == "clsact"
}

var native = nl.NativeEndian()
