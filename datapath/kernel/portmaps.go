package kernel

import (
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
)

// Published ports are elements of two maps, not rules, so that a port
// change is a few element updates for one endpoint instead of a rewrite
// of the whole table (with 1,000 published ports that rewrite made every
// create cost ~100 ms):
//
//	map ports      { type inet_proto . inet_service : ipv4_addr . inet_service }              # any host address
//	map ports_addr { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service }  # one host address
//	chain prerouting / output:
//	  fib daddr type local counter dnat ip to meta l4proto . th dport map @ports
//	  counter dnat ip to ip daddr . meta l4proto . th dport map @ports_addr
//
// Each element carries the endpoint's port comment, so a restarted
// datapath adopts the published ports from the maps.
const (
	portsMap     = "ports"
	portsAddrMap = "ports_addr"
)

// Transaction IDs of the sets within one table replacement (queueRuleset).
const (
	setIDBridges = 1 + iota
	setIDPeers
	setIDPorts
	setIDPortsAddr
)

func portsMapSpec(addr bool) *nftables.Set {
	s := &nftables.Set{Table: table, ID: setIDPorts, Name: portsMap, IsMap: true, Concatenation: true,
		KeyType:  nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService),
		DataType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)}
	if addr {
		s.ID, s.Name = setIDPortsAddr, portsAddrMap
		s.KeyType = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	}
	return s
}

// portElem is one published port as an element of one of the maps.
type portElem struct {
	addr bool // in ports_addr (a given host address) rather than ports
	elem nftables.SetElement
}

// hostAddrOf returns the host address a mapping is limited to, if any
// (0.0.0.0 means every address, as an empty one does).
func hostAddrOf(m datapath.PortMapping) (netip.Addr, bool) {
	if m.HostIP.IsValid() && !m.HostIP.IsUnspecified() {
		return m.HostIP, true
	}
	return netip.Addr{}, false
}

// portElemOf encodes p: every field of a concatenation takes a whole
// 4-byte register, zero-padded.
func portElemOf(p portEntry) portElem {
	m := p.mapping
	key := make([]byte, 0, 12)
	hostIP, limited := hostAddrOf(m)
	if limited {
		key = append(key, hostIP.AsSlice()...)
	}
	key = append(key, l4proto(m.Proto), 0, 0, 0)
	key = append(key, binaryutil.BigEndian.PutUint16(m.HostPort)...)
	key = append(key, 0, 0)
	val := append(p.addr.AsSlice(), binaryutil.BigEndian.PutUint16(m.Port)...)
	val = append(val, 0, 0)
	return portElem{addr: limited, elem: nftables.SetElement{Key: key, Val: val, Comment: encodePortComment(p)}}
}

// portElems returns the elements of ep's ports, by map.
func portElems(id string, ep endpointPorts) (wild, addr []nftables.SetElement) {
	for _, m := range ep.Ports {
		e := portElemOf(portEntry{endpoint: id, network: ep.NetworkID, addr: ep.Addr, mapping: m})
		if e.addr {
			addr = append(addr, e.elem)
		} else {
			wild = append(wild, e.elem)
		}
	}
	return wild, addr
}

// portRules are the two DNAT rules of the prerouting and output chains.
func portRules() [][]expr.Any {
	dnat := []expr.Any{
		&expr.Counter{},
		// Register 1 holds the address, register 9 (the next 4 bytes)
		// the port.
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 9, Specified: true},
	}
	proto := func(reg uint32) expr.Any { return &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg} }
	dport := func(reg uint32) expr.Any {
		return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
	}
	lookup := func(set string) expr.Any {
		return &expr.Lookup{SourceRegister: 1, SetName: set, DestRegister: 1, IsDestRegSet: true}
	}
	wild := cat(matchLocalDst(), []expr.Any{proto(1), dport(9), lookup(portsMap)}, dnat)
	addr := cat([]expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		proto(9), dport(10), lookup(portsAddrMap),
	}, dnat)
	return [][]expr.Any{wild, addr}
}

// queuePortMaps adds both maps with rs's elements to a table replacement.
func queuePortMaps(c *nftables.Conn, rs ruleset, sets map[string]uint32) error {
	var wild, addr []nftables.SetElement
	for _, p := range rs.ports {
		if p.addr {
			addr = append(addr, p.elem)
		} else {
			wild = append(wild, p.elem)
		}
	}
	for _, m := range []struct {
		set   *nftables.Set
		elems []nftables.SetElement
	}{{portsMapSpec(false), wild}, {portsMapSpec(true), addr}} {
		if err := addSet(c, m.set, m.elems); err != nil {
			return fmt.Errorf("queue map %s: %w", m.set.Name, err)
		}
		sets[m.set.Name] = m.set.ID
	}
	return nil
}

// elemsPerMessage bounds the elements of one netlink message: their list
// is one attribute, whose length is 16 bits, and a longer one wraps and is
// silently cut short by the kernel (488 of 1,000 ports went in).
const elemsPerMessage = 128

// inChunks queues op (SetAddElements, SetDeleteElements) for elems at
// most elemsPerMessage at a time. Every element list fabric sends goes
// through it or addSet.
func inChunks(op func(*nftables.Set, []nftables.SetElement) error, set *nftables.Set, elems []nftables.SetElement) error {
	for len(elems) > 0 {
		n := min(len(elems), elemsPerMessage)
		if err := op(set, elems[:n]); err != nil {
			return err
		}
		elems = elems[n:]
	}
	return nil
}

// addSet queues the set's creation with elems, in chunks (inChunks).
func addSet(c *nftables.Conn, set *nftables.Set, elems []nftables.SetElement) error {
	if err := c.AddSet(set, nil); err != nil {
		return err
	}
	return inChunks(c.SetAddElements, set, elems)
}

// portsChanged brings the table to ep's published ports (old is what the
// table held for it, had whether it held any). While the table is known
// to be whole, that is one batch of element deletions and additions for
// this endpoint alone; otherwise, or if the batch fails (the table was
// removed behind the datapath's back), the table is replaced.
func (d *Datapath) portsChanged(id string, old endpointPorts, had bool) error {
	if d.dirty || !d.tableLive {
		return d.applyRuleset()
	}
	newEP, has := d.state.ports[id]
	if err := d.updatePortElems(id, old, had, newEP, has); err != nil {
		d.log.Warn("published ports: element update failed; replacing the table", "endpoint", id, "err", err)
		return d.applyRuleset()
	}
	return nil
}

func (d *Datapath) updatePortElems(id string, old endpointPorts, had bool, newEP endpointPorts, has bool) error {
	c, err := d.batchConn()
	if err != nil {
		return err
	}
	d.nftBatches++
	if had {
		wild, addr := portElems(id, old)
		if err := queueElems(c.SetDeleteElements, wild, addr); err != nil {
			return err
		}
	}
	if has {
		wild, addr := portElems(id, newEP)
		if err := queueElems(c.SetAddElements, wild, addr); err != nil {
			return err
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("update published ports of endpoint %s: %w", id, err)
	}
	return nil
}

func queueElems(op func(*nftables.Set, []nftables.SetElement) error, wild, addr []nftables.SetElement) error {
	if err := inChunks(op, portsMapSpec(false), wild); err != nil {
		return fmt.Errorf("queue elements of %s: %w", portsMap, err)
	}
	if err := inChunks(op, portsMapSpec(true), addr); err != nil {
		return fmt.Errorf("queue elements of %s: %w", portsAddrMap, err)
	}
	return nil
}

// portMapsMatch reports whether the maps hold as many elements as rs: a
// removed or flushed element shows as a difference.
func (d *Datapath) portMapsMatch(rs ruleset) (bool, error) {
	want := map[bool]int{}
	for _, p := range rs.ports {
		want[p.addr]++
	}
	for _, addr := range []bool{false, true} {
		elems, err := d.setElements(portsMapSpec(addr))
		if err != nil {
			return false, fmt.Errorf("list map %s: %w", portsMapSpec(addr).Name, err)
		}
		if len(elems) != want[addr] {
			return false, nil
		}
	}
	return true, nil
}

// restorePortMaps reads the published ports back from the maps' element
// comments.
func (d *Datapath) restorePortMaps(s *desired) {
	for _, addr := range []bool{false, true} {
		elems, err := d.setElements(portsMapSpec(addr))
		if err != nil {
			continue // no maps: an older table or none
		}
		for _, e := range elems {
			var pc portComment
			if e.Comment == "" || json.Unmarshal([]byte(e.Comment), &pc) != nil || pc.Endpoint == "" {
				continue
			}
			adoptPort(s, pc)
		}
	}
}

func adoptPort(s *desired, pc portComment) {
	ep := s.ports[pc.Endpoint]
	ep.NetworkID, ep.Addr = pc.Net, pc.Addr
	ep.Ports = append(ep.Ports, datapath.PortMapping{Proto: pc.Proto, HostIP: pc.HostIP, HostPort: pc.HostPort, Port: pc.Port})
	s.ports[pc.Endpoint] = ep
}
