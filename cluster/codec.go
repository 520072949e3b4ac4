package cluster

import (
	"net/netip"
)

// Wire format, version 2. Every message starts with [codecVersion][type];
// integers are unsigned varints, strings and byte slices are length-prefixed,
// addresses are a length byte (0, 4 or 16) and the bytes. Decoding checks
// every length against the bytes left and a per-field limit, validates the
// fields, and rejects trailing bytes, so a message is either fully valid or
// dropped and counted. Requests, responses and leave intents end with the
// sender's ed25519 signature of everything before it (identity.go).
const (
	codecVersion  = 2
	maxMsgBytes   = 64 << 10 // gossip and direct messages
	maxStateBytes = 8 << 20  // push/pull state and snapshots; larger is dropped undecoded
	maxRecords    = maxTotalRecords + maxNetworks
	maxReason     = 1024
)

type msgType uint8

const (
	msgRecord   msgType = 1 // one state change, gossiped
	msgRequest  msgType = 2 // a direct request that expects a response
	msgResponse msgType = 3
	msgState    msgType = 4 // full state, push/pull
	msgSnapshot msgType = 5 // full state plus local allocations, for the agent's store
	msgLeave    msgType = 6 // a node is about to leave gracefully (memberlist cannot tell)
)

type opCode uint8

const (
	opClaim      opCode = 1 // claim a block or an address; vote yes or no
	opAbort      opCode = 2 // a claim failed; release the promise
	opPropose    opCode = 3 // a new network; answer whether it is accepted
	opKeyInstall opCode = 4
	opKeyUse     opCode = 5
	opKeyRemove  opCode = 6
)

type resKind uint8

const (
	resBlock resKind = 1
	resIP    resKind = 2
)

// resKey names something a node claims: a block, or one address as a /32.
type resKey struct {
	Kind resKind
	Net  NetworkID
	P    netip.Prefix
}

// request is a direct message that expects a response. The response goes
// to From's memberlist address: a request names no address.
type request struct {
	ID    uint64 // random (newRequestID): a response must echo it
	From  string
	Op    opCode
	Res   resKey     // opClaim, opAbort
	Owner string     // opClaim: who the address is for
	Net   *netRecord // opPropose
	Key   []byte     // key ops
}

type response struct {
	ID      uint64
	From    string
	OK      bool
	Reason  string
	Records []record // what decided a refusal, so the requester learns it at once
}

const maxResponseRecords = 8

type stateMsg struct {
	Clock   uint64
	Records []record
}

type alloc struct {
	Net   NetworkID
	IP    netip.Addr
	Owner string
}

type snapshot struct {
	Node    string
	Clock   uint64
	Version uint64
	Taken   int64 // unix seconds
	Records []record
	Allocs  []alloc
}

// leaveIntent says a node is leaving on purpose, so the others report
// EventMemberLeft rather than EventMemberFailed; Stamp tells repeats apart.
type leaveIntent struct {
	Node  string
	Stamp uint64
}

type message struct {
	Type     msgType
	Record   *record
	Request  *request
	Response *response
	State    *stateMsg
	Snapshot *snapshot
	Leave    *leaveIntent

	// Signed types only: the signature, and the bytes it covers.
	sig    []byte
	signed []byte
}

// signedType reports whether messages of type t carry a signature.
func signedType(t msgType) bool { return t == msgRequest || t == msgResponse || t == msgLeave }

func encodeMessage(m message) []byte {
	e := &encoder{buf: make([]byte, 0, 128)}
	e.u8(codecVersion)
	e.u8(byte(m.Type))
	switch m.Type {
	case msgRecord:
		e.record(*m.Record)
	case msgRequest:
		q := m.Request
		e.uvarint(q.ID)
		e.str(q.From)
		e.u8(byte(q.Op))
		switch q.Op {
		case opClaim, opAbort:
			e.u8(byte(q.Res.Kind))
			e.netID(q.Res.Net)
			e.prefix(q.Res.P)
			e.str(q.Owner)
		case opPropose:
			e.netRecord(q.Net)
			e.fixed(q.Net.Sig, sigSize)
		case opKeyInstall, opKeyUse, opKeyRemove:
			e.bytes(q.Key)
		}
	case msgResponse:
		r := m.Response
		e.uvarint(r.ID)
		e.str(r.From)
		e.boolean(r.OK)
		e.str(r.Reason)
		e.records(r.Records)
	case msgState:
		e.uvarint(m.State.Clock)
		e.records(m.State.Records)
	case msgLeave:
		e.str(m.Leave.Node)
		e.uvarint(m.Leave.Stamp)
	case msgSnapshot:
		s := m.Snapshot
		e.str(s.Node)
		e.uvarint(s.Clock)
		e.uvarint(s.Version)
		e.uvarint(uint64(s.Taken))
		e.records(s.Records)
		e.uvarint(uint64(len(s.Allocs)))
		for _, a := range s.Allocs {
			e.netID(a.Net)
			e.addr(a.IP)
			e.str(a.Owner)
		}
	}
	if signedType(m.Type) {
		e.fixed(m.sig, sigSize)
	}
	return e.buf
}

func (e *encoder) netID(id NetworkID) { e.uvarint(id.Clock); e.str(id.Node) }
func (e *encoder) version(v version)  { e.netID(NetworkID(v)) }

// decodeMessage decodes and validates one message. The error says why it
// was dropped; dropReason turns it into a counter label.
func decodeMessage(b []byte) (message, error) {
	d := &decoder{buf: b}
	if len(b) < 2 {
		d.fail(dropMalformed, "message of %d bytes", len(b))
		return message{}, d.err
	}
	if b[0] != codecVersion {
		d.fail(dropVersion, "codec version %d, want %d", b[0], codecVersion)
		return message{}, d.err
	}
	m := message{Type: msgType(b[1])}
	limit := maxMsgBytes
	if m.Type == msgState || m.Type == msgSnapshot {
		limit = maxStateBytes
	}
	if len(b) > limit {
		d.fail(dropOversized, "%d bytes, limit %d", len(b), limit)
		return message{}, d.err
	}
	d.buf = b[2:]
	switch m.Type {
	case msgRecord:
		r := d.record()
		m.Record = &r
	case msgRequest:
		m.Request = d.request()
	case msgResponse:
		r := &response{ID: d.uvarint(), From: d.nodeName(), OK: d.boolean(), Reason: d.str(maxReason, "reason")}
		n := d.count(maxResponseRecords, "response records")
		for i := 0; i < n && d.err == nil; i++ {
			r.Records = append(r.Records, d.record())
		}
		m.Response = r
	case msgState:
		m.State = &stateMsg{Clock: d.uvarint(), Records: d.records()}
	case msgSnapshot:
		m.Snapshot = d.snapshot()
	case msgLeave:
		m.Leave = &leaveIntent{Node: d.nodeName(), Stamp: d.uvarint()}
	default:
		d.fail(dropUnknownType, "message type %d", m.Type)
	}
	if signedType(m.Type) && d.err == nil {
		m.signed = b[:len(b)-len(d.buf)]
		m.sig = d.raw(sigSize)
	}
	if err := d.finish(); err != nil {
		return message{}, err
	}
	return m, nil
}

func (d *decoder) nodeName() string {
	s := d.str(maxNodeName, "node name")
	if d.err == nil && s == "" {
		d.fail(dropInvalid, "empty node name")
	}
	return s
}

func (d *decoder) netID() NetworkID {
	id := NetworkID{Clock: d.uvarint(), Node: d.nodeName()}
	if d.err == nil && id.Clock == 0 {
		d.fail(dropInvalid, "zero clock")
	}
	return id
}

func (d *decoder) version() version { return version(d.netID()) }

func (d *decoder) request() *request {
	q := &request{ID: d.uvarint(), From: d.nodeName()}
	q.Op = opCode(d.u8())
	if d.err != nil {
		return nil
	}
	switch q.Op {
	case opClaim, opAbort:
		q.Res = resKey{Kind: resKind(d.u8()), Net: d.netID(), P: d.prefix()}
		q.Owner = d.str(maxLabel, "owner")
		if d.err == nil && !validRes(q.Res) {
			d.fail(dropInvalid, "bad claim %v", q.Res)
		}
	case opPropose:
		q.Net = d.netRecord()
		q.Net.Sig = d.bytesFixed(sigSize)
	case opKeyInstall, opKeyUse, opKeyRemove:
		q.Key = d.bytes(32, "key")
		if d.err == nil && validKeyLen(len(q.Key)) != nil {
			d.fail(dropInvalid, "key of %d bytes", len(q.Key))
		}
	default:
		d.fail(dropUnknownType, "request op %d", q.Op)
	}
	return q
}

func validRes(k resKey) bool {
	if !k.P.IsValid() || !k.P.Addr().Is4() {
		return false
	}
	switch k.Kind {
	case resBlock:
		return k.P.Bits() <= 30
	case resIP:
		return k.P.Bits() == 32
	}
	return false
}

func (d *decoder) snapshot() *snapshot {
	s := &snapshot{Node: d.nodeName(), Clock: d.uvarint(), Version: d.uvarint()}
	s.Taken = int64(d.uvarint() & (1<<62 - 1))
	s.Records = d.records()
	n := d.count(maxRecords, "allocation count")
	s.Allocs = make([]alloc, 0, min(n, len(d.buf)/8))
	for i := 0; i < n && d.err == nil; i++ {
		a := alloc{Net: d.netID(), IP: d.addr(), Owner: d.str(maxLabel, "owner")}
		if d.err == nil && !a.IP.Is4() {
			d.fail(dropInvalid, "bad allocated address %s", a.IP)
		}
		s.Allocs = append(s.Allocs, a)
	}
	return s
}
