package plumb

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
)

// A sandbox on a macvlan/ipvlan network reaches the host's INPUT through
// its network's host shim, not through a bridge (which the kernel
// datapath's input chain guards) nor through a veth with the endpoint
// program on it (which guards the eBPF datapath's): without more, it could
// talk to fabric's own ports (gossip, tunnel, metrics) on the shim's
// address, or on any host address once it routes that address via the
// shim. An ipvlan (L2) sandbox does not even need a shim: it reaches the
// host's addresses through the parent itself (see guardRules). So both
// datapaths keep one more table, owned by this package, while any host
// shim or ipvlan network exists:
//
//	table ip fabric_shims {
//	  chain input { type filter hook input priority filter; policy accept;
//	    iifname "fs-*" meta l4proto P th dport PORT counter drop   # per guarded port
//	    iifname PARENT ether saddr PARENT-MAC meta l4proto P th dport PORT counter drop  # per ipvlan parent and port
//	  }
//	}
//
// The match is on the shim name prefix (ShimName), so a shim is covered
// from the moment it exists, before any state names it, and after a
// restart. Everything else a bridge sandbox may do passes as it does from
// a bridge: published ports (DNAT in prerouting: forwarded, never INPUT),
// the host's other ports, replies. 127.0.0.0/8 needs no rule: shims never
// get route_localnet, so the kernel drops such packets as martians.

// ShimGuardTable is the nftables table of the host shims' guard.
const ShimGuardTable = "fabric_shims"

// ShimGuardComment marks the table's drop rules; the datapaths add their
// counters to the host-port drops of their metrics.
const ShimGuardComment = "drop:host-port"

const (
	shimPrefix      = "fs-"
	shimGuardChain  = "input"
	shimGuardIfSize = 16
)

var shimGuardTable = &nftables.Table{Name: ShimGuardTable, Family: nftables.TableFamilyIPv4}

// SetGuardPorts sets the ports the shim guard closes (the datapath's
// GuardPorts, checked by it); the table follows at the next ensure of a
// shim.
func (h *Host) SetGuardPorts(ports []datapath.HostPort) { h.guard = slices.Clone(ports) }

// guardRule is one drop rule: a guarded port on packets arriving over a
// shim (parent ""), or over an ipvlan network's parent with the parent's
// own MAC as source.
type guardRule struct {
	port   datapath.HostPort
	parent string
	mac    net.HardwareAddr
	// subnet, when valid, makes it a rule for an ipvlan L3/L3S network:
	// packets on lo from a non-local source in subnet.
	subnet netip.Prefix
}

// comment names the rule by what it matches, so an existing table can be
// compared with the wanted one without decoding expressions.
func (r guardRule) comment() string {
	if r.subnet.IsValid() {
		return fmt.Sprintf("%s lo %s %s/%d", ShimGuardComment, r.subnet, r.port.Proto, r.port.Port)
	}
	if r.parent == "" {
		return fmt.Sprintf("%s shim %s/%d", ShimGuardComment, r.port.Proto, r.port.Port)
	}
	return fmt.Sprintf("%s %s %s %s/%d", ShimGuardComment, r.parent, r.mac, r.port.Proto, r.port.Port)
}

// guardRules are the rules the current LAN networks need: none without
// guarded ports or without shims and ipvlan networks. An ipvlan child in
// L2 mode shares its parent's MAC, and a frame it sends to that MAC for
// an address no child has is handed to the parent's own stack
// (dev_forward_skb): a sandbox reaches every host address that way, with
// or without a shim, arriving on the parent. Frames from the wire never
// carry the parent's own MAC as source, so that MAC tells them apart.
func (h *Host) guardRules() []guardRule {
	shims, parents, routed := false, map[string]bool{}, map[netip.Prefix]bool{}
	for _, n := range h.parentNets {
		shims = shims || n.HostShim.IsValid()
		if n.Driver != datapath.DriverIPvlan {
			continue
		}
		parents[n.Parent] = true
		if n.Mode == "l3" || n.Mode == "l3s" {
			routed[n.Subnet.Masked()] = true
		}
	}
	var out []guardRule
	if shims {
		for _, g := range h.guard {
			out = append(out, guardRule{port: g})
		}
	}
	for _, name := range slices.Sorted(maps.Keys(parents)) {
		link, err := h.nl.LinkByName(name)
		if err != nil {
			continue // no parent, no path; the next ensure of the network adds it
		}
		for _, g := range h.guard {
			out = append(out, guardRule{port: g, parent: name, mac: link.Attrs().HardwareAddr})
		}
	}
	// An ipvlan L3/L3S child's packet for an address no child has is
	// routed in the host's namespace: to a host address it arrives on lo.
	for _, p := range slices.SortedFunc(maps.Keys(routed), func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) }) {
		for _, g := range h.guard {
			out = append(out, guardRule{port: g, subnet: p})
		}
	}
	return out
}

func (h *Host) nft() (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithNetNSFd(int(h.hostNS)))
	if err != nil {
		return nil, fmt.Errorf("nftables connection in host netns: %w", err)
	}
	return c, nil
}

// shimGuardRules lists the comments of the table's rules; exists is false
// if there is no table.
func shimGuardRules(c *nftables.Conn) (comments []string, exists bool, err error) {
	rules, err := c.GetRules(shimGuardTable, &nftables.Chain{Name: shimGuardChain, Table: shimGuardTable})
	if errors.Is(err, unix.ENOENT) {
		tables, lerr := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
		if lerr != nil {
			return nil, false, fmt.Errorf("list nftables tables: %w", lerr)
		}
		return nil, slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == ShimGuardTable }), nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("list rules of %s: %w", ShimGuardTable, err)
	}
	for _, r := range rules {
		s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
		comments = append(comments, s)
	}
	return comments, true, nil
}

// ensureShimGuard makes the table match the LAN networks and guarded
// ports, replacing it (in one transaction) only if it differs, so its
// counters survive. With nothing to guard there is no table.
func (h *Host) ensureShimGuard() error {
	rules := h.guardRules()
	if len(rules) == 0 && h.guardGone {
		return nil
	}
	c, err := h.nft()
	if err != nil {
		return err
	}
	have, exists, err := shimGuardRules(c)
	if err != nil {
		return err
	}
	want := make([]string, 0, len(rules))
	for _, r := range rules {
		want = append(want, r.comment())
	}
	if exists == (len(want) > 0) && slices.Equal(have, want) {
		h.guardGone = !exists
		return nil
	}
	c.AddTable(shimGuardTable) // makes the delete succeed whether or not it exists
	c.DelTable(shimGuardTable)
	if len(want) > 0 {
		t := c.AddTable(shimGuardTable)
		ch := c.AddChain(&nftables.Chain{Name: shimGuardChain, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
		for _, r := range rules {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r.exprs(),
				UserData: userdata.AppendString(nil, userdata.TypeComment, r.comment())})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("write nftables table %s: %w", ShimGuardTable, err)
	}
	h.guardGone = len(want) == 0
	return nil
}

// exprs: iifname "fs-*" (or iifname PARENT ether saddr MAC) meta l4proto
// P th dport PORT counter drop.
func (r guardRule) exprs() []expr.Any {
	proto := byte(unix.IPPROTO_TCP)
	if r.port.Proto == "udp" {
		proto = unix.IPPROTO_UDP
	}
	var from []expr.Any
	switch {
	case r.subnet.IsValid():
		lo := make([]byte, shimGuardIfSize)
		copy(lo, "lo")
		mask := net.CIDRMask(r.subnet.Bits(), 32)
		from = []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: lo},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: r.subnet.Addr().AsSlice()},
			// The host's own addresses in the subnet (the shim's, a LAN
			// address) talk to it over lo too, and may.
			&expr.Fib{Register: 1, FlagSADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
		}
	case r.parent == "":
		// A compare shorter than the register is a prefix match, as
		// nft's own iifname "fs-*".
		from = []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(shimPrefix)},
		}
	default:
		name := make([]byte, shimGuardIfSize)
		copy(name, r.parent)
		from = []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(r.mac)},
		}
	}
	return append(from,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(r.port.Port)},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	)
}

// ShimGuardDrops sums the packets and bytes the shim guard dropped, as
// the datapaths' from-endpoint host-port drop counter (zero: no table).
func (h *Host) ShimGuardDrops() (datapath.Counter, error) {
	out := datapath.Counter{Direction: "from-endpoint", Verdict: "drop", Reason: "host-port"}
	if h.guardGone {
		return out, nil
	}
	c, err := h.nft()
	if err != nil {
		return out, err
	}
	rules, err := c.GetRules(shimGuardTable, &nftables.Chain{Name: shimGuardChain, Table: shimGuardTable})
	if errors.Is(err, unix.ENOENT) {
		return out, nil
	}
	if err != nil {
		return out, fmt.Errorf("list rules of %s: %w", ShimGuardTable, err)
	}
	for _, r := range rules {
		for _, e := range r.Exprs {
			if ctr, ok := e.(*expr.Counter); ok {
				out.Packets += ctr.Packets
				out.Bytes += ctr.Bytes
			}
		}
	}
	return out, nil
}

// AddShimGuardDrops adds the shim guard's drops to m's host-port drop
// counter (making it if m has none).
func (h *Host) AddShimGuardDrops(m *datapath.Metrics) error {
	c, err := h.ShimGuardDrops()
	if err != nil || c.Packets == 0 {
		return err
	}
	for i := range m.Counters {
		have := &m.Counters[i]
		if have.Direction == c.Direction && have.Verdict == c.Verdict && have.Reason == c.Reason {
			have.Packets += c.Packets
			have.Bytes += c.Bytes
			return nil
		}
	}
	m.Counters = append(m.Counters, c)
	return nil
}

// deleteTable removes the table name, IPv4 or bridge family, if it exists.
func deleteTable(c *nftables.Conn, name string) error {
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyBridge} {
		tables, err := c.ListTablesOfFamily(fam)
		if err != nil {
			return fmt.Errorf("list nftables tables: %w", err)
		}
		for _, t := range tables {
			if t.Name == name {
				c.DelTable(t)
				if err := c.Flush(); err != nil {
					return fmt.Errorf("delete nftables table %s: %w", name, err)
				}
			}
		}
	}
	return nil
}
