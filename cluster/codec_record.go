package cluster

import (
	"maps"
	"net/netip"
	"slices"
)

// Records: the replicated items of the cluster's state (networks,
// endpoints, block leases, address claims), their wire encoding and the
// checks a received record must pass. The message framing around them is
// in codec.go.

type recordKind uint8

const (
	kindNetwork  recordKind = 1
	kindEndpoint recordKind = 2
	kindLease    recordKind = 3
	kindClaim    recordKind = 4
)

// version orders writes of one key: lamport clock, then writer node name.
type version struct {
	Clock uint64
	Node  string
}

func (v version) less(o version) bool { return NetworkID(v).less(NetworkID(o)) }

type delReason uint8

const (
	reasonRemoved  delReason = 1
	reasonConflict delReason = 2
)

type netRecord struct {
	Net     Network
	Deleted bool
	DelVer  version   // the first tombstone wins, so all nodes agree on reason
	Reason  delReason // why it was deleted
	Winner  NetworkID // the network it lost to, when Reason is reasonConflict
	Sig     []byte    // by the writer: ID.Node for a create, DelVer.Node for a tombstone
}

type epRecord struct {
	Ver     version
	Deleted bool
	EP      Endpoint
	Sig     []byte // by Ver.Node
}

type leaseRecord struct {
	Ver     version
	Deleted bool
	Net     NetworkID
	Block   netip.Prefix
	Node    string
	Sig     []byte // by Ver.Node
}

type claimRecord struct {
	Ver     version
	Deleted bool
	Net     NetworkID
	IP      netip.Addr
	Node    string
	Owner   string
	Sig     []byte // by Ver.Node
}

// record is one replicated item; exactly one pointer is set.
type record struct {
	net   *netRecord
	ep    *epRecord
	lease *leaseRecord
	claim *claimRecord
}

// key identifies what a record is about, so a newer broadcast replaces an
// older one still waiting in the queue.
func (r record) key() string {
	switch {
	case r.net != nil:
		return "n/" + r.net.Net.ID.String()
	case r.ep != nil:
		return "e/" + r.ep.EP.ID
	case r.lease != nil:
		return "l/" + r.lease.Net.String() + "/" + r.lease.Block.String()
	case r.claim != nil:
		return "c/" + r.claim.Net.String() + "/" + r.claim.IP.String()
	}
	return ""
}

func (e *encoder) records(rs []record) {
	e.uvarint(uint64(len(rs)))
	for _, r := range rs {
		e.record(r)
	}
}

// record writes r, its writer's signature last (zeros if unsigned).
func (e *encoder) record(r record) {
	e.recordBody(r)
	e.fixed(*r.sig(), sigSize)
}

// fixed writes b padded with zeros (or cut) to n bytes.
func (e *encoder) fixed(b []byte, n int) {
	start := len(e.buf)
	e.buf = append(e.buf, make([]byte, n)...)
	copy(e.buf[start:], b)
}

// recordBody writes what a record's signature covers: all but the
// signature.
func (e *encoder) recordBody(r record) {
	switch {
	case r.net != nil:
		e.u8(byte(kindNetwork))
		e.netRecord(r.net)
	case r.ep != nil:
		e.u8(byte(kindEndpoint))
		e.version(r.ep.Ver)
		e.boolean(r.ep.Deleted)
		ep := &r.ep.EP
		e.str(ep.ID)
		e.str(ep.Network)
		e.str(ep.Node)
		e.addr(ep.IP)
		e.bytes(ep.MAC)
		e.str(ep.Name)
		e.uvarint(uint64(len(ep.Aliases)))
		for _, a := range ep.Aliases {
			e.str(a)
		}
	case r.lease != nil:
		e.u8(byte(kindLease))
		e.version(r.lease.Ver)
		e.boolean(r.lease.Deleted)
		e.netID(r.lease.Net)
		e.prefix(r.lease.Block)
		e.str(r.lease.Node)
	case r.claim != nil:
		e.u8(byte(kindClaim))
		e.version(r.claim.Ver)
		e.boolean(r.claim.Deleted)
		e.netID(r.claim.Net)
		e.addr(r.claim.IP)
		e.str(r.claim.Node)
		e.str(r.claim.Owner)
	}
}

func (e *encoder) netRecord(n *netRecord) {
	e.netID(n.Net.ID)
	s := &n.Net.NetworkSpec
	e.str(s.Name)
	e.prefix(s.Subnet)
	e.addr(s.Gateway)
	e.u8(byte(s.BlockBits))
	e.uvarint(uint64(s.VNI))
	e.boolean(s.Internal)
	keys := slices.Sorted(maps.Keys(s.Options))
	e.uvarint(uint64(len(keys)))
	for _, k := range keys {
		e.str(k)
		e.str(s.Options[k])
	}
	e.boolean(n.Deleted)
	if n.Deleted {
		e.version(n.DelVer)
		e.u8(byte(n.Reason))
		e.netID(n.Winner)
	}
}

func (d *decoder) records() []record {
	n := d.count(maxRecords, "record count")
	// Each record takes at least 8 bytes: never trust the count for the
	// allocation.
	rs := make([]record, 0, min(n, len(d.buf)/8))
	for i := 0; i < n && d.err == nil; i++ {
		rs = append(rs, d.record())
	}
	return rs
}

func (d *decoder) record() record {
	r := d.recordBody()
	if d.err == nil {
		*r.sig() = d.bytesFixed(sigSize)
	}
	return r
}

func (d *decoder) recordBody() record {
	switch kind := recordKind(d.u8()); kind {
	case kindNetwork:
		return record{net: d.netRecord()}
	case kindEndpoint:
		r := &epRecord{Ver: d.version(), Deleted: d.boolean()}
		ep := &r.EP
		ep.ID = d.str(maxEndpointID, "endpoint id")
		ep.Network = d.str(maxNetName, "network")
		ep.Node = d.nodeName()
		ep.IP = d.addr()
		ep.MAC = d.bytes(6, "mac")
		ep.Name = d.str(maxDNSName, "name")
		n := d.count(maxAliases, "alias count")
		for i := 0; i < n && d.err == nil; i++ {
			ep.Aliases = append(ep.Aliases, d.str(maxDNSName, "alias"))
		}
		if d.err == nil {
			if err := ep.validate(); err != nil {
				d.fail(dropInvalid, "%v", err)
			}
		}
		d.checkWriter(r.Ver, r.Deleted, ep.Node, "endpoint "+ep.ID)
		return record{ep: r}
	case kindLease:
		r := &leaseRecord{Ver: d.version(), Deleted: d.boolean(), Net: d.netID(), Block: d.prefix(), Node: d.nodeName()}
		if d.err == nil && !validRes(resKey{Kind: resBlock, P: r.Block}) {
			d.fail(dropInvalid, "bad block %s", r.Block)
		}
		d.checkWriter(r.Ver, r.Deleted, r.Node, "lease")
		return record{lease: r}
	case kindClaim:
		r := &claimRecord{Ver: d.version(), Deleted: d.boolean(), Net: d.netID(), IP: d.addr(), Node: d.nodeName(), Owner: d.str(maxLabel, "owner")}
		if d.err == nil && !r.IP.Is4() {
			d.fail(dropInvalid, "bad claimed address %s", r.IP)
		}
		d.checkWriter(r.Ver, r.Deleted, r.Node, "claim")
		return record{claim: r}
	default:
		d.fail(dropUnknownType, "record kind %d", kind)
		return record{}
	}
}

func (d *decoder) netRecord() *netRecord {
	r := &netRecord{}
	r.Net.ID = d.netID()
	s := &r.Net.NetworkSpec
	s.Name = d.str(maxNetName, "network name")
	s.Subnet = d.prefix()
	s.Gateway = d.addr()
	s.BlockBits = int(d.u8())
	vni := d.uvarint()
	s.Internal = d.boolean()
	n := d.count(maxOptions, "option count")
	for i := 0; i < n && d.err == nil; i++ {
		k, v := d.str(maxOptionLen, "option key"), d.str(maxOptionLen, "option value")
		if s.Options == nil {
			s.Options = make(map[string]string, n)
		}
		if _, dup := s.Options[k]; dup && d.err == nil {
			d.fail(dropInvalid, "duplicate option %q", k)
		}
		s.Options[k] = v
	}
	r.Deleted = d.boolean()
	if r.Deleted {
		r.DelVer = d.version()
		r.Reason = delReason(d.u8())
		if r.Reason == reasonConflict {
			r.Winner = d.netID()
		} else {
			r.Winner = NetworkID{Clock: d.uvarint(), Node: d.str(maxNodeName, "node name")}
		}
	}
	if d.err != nil {
		return r
	}
	if vni == 0 || vni > maxVNI {
		d.fail(dropInvalid, "VNI %d", vni)
		return r
	}
	s.VNI = uint32(vni)
	// Received specs are complete: normalize must not change them.
	before := *s
	if err := s.normalize(); err != nil {
		d.fail(dropInvalid, "%v", err)
	} else if before.Gateway != s.Gateway || before.BlockBits != s.BlockBits {
		d.fail(dropInvalid, "network %q: incomplete spec", s.Name)
	}
	if r.Deleted && r.Reason != reasonRemoved && r.Reason != reasonConflict {
		d.fail(dropInvalid, "deletion reason %d", r.Reason)
	}
	return r
}

// checkWriter drops a live record (what, of node) that node did not
// write itself: only a tombstone may come from another node.
func (d *decoder) checkWriter(ver version, deleted bool, node, what string) {
	if d.err == nil && !deleted && ver.Node != node {
		d.fail(dropInvalid, "%s of %s written by %s", what, node, ver.Node)
	}
}
