package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"unicode/utf8"
)

// Drop reasons, used as counter labels for messages that are not applied.
const (
	dropMalformed   = "malformed"    // truncated, bad varint, trailing bytes
	dropInvalid     = "invalid"      // well formed, but a field is out of range
	dropOversized   = "oversized"    // larger than the limit for its kind
	dropVersion     = "version"      // unknown codec version
	dropUnknownType = "unknown_type" // unknown message type or op
	dropQueueFull   = "queue_full"   // no room to send a reply
	dropBadMeta     = "bad_meta"     // node metadata that does not decode

	// Sender identity and bounds (identity.go, limits.go).
	dropNotMember     = "not_member"      // a signed message naming a node that is not a live member
	dropBadSignature  = "bad_signature"   // its signature does not verify with that member's key
	dropIdentity      = "identity"        // an alive message changing a live member's identity key
	dropForeign       = "foreign"         // a record about another node than the writer may write
	dropClock         = "clock"           // a lamport clock too far ahead of this node's
	dropLimit         = "limit"           // over a per-node or total record cap
	dropUnknownNet    = "unknown_network" // an endpoint, lease or claim of a network not known here
	dropUndecryptable = "undecryptable"   // a packet or stream memberlist could not decrypt (no key, or another)
	dropDisplace      = "displace"        // a network create that would displace an accepted one
)

// decodeError is what every decode failure returns; reason is one of the
// drop reasons above so the caller can count it.
type decodeError struct {
	reason string
	msg    string
}

func (e *decodeError) Error() string { return e.reason + ": " + e.msg }

func dropReason(err error) string {
	var de *decodeError
	if errors.As(err, &de) {
		return de.reason
	}
	return dropMalformed
}

// encoder appends the compact binary form: unsigned varints, length-prefixed
// strings, addresses as a length byte (0, 4 or 16) plus the bytes.
type encoder struct{ buf []byte }

func (e *encoder) u8(v byte)             { e.buf = append(e.buf, v) }
func (e *encoder) uvarint(v uint64)      { e.buf = binary.AppendUvarint(e.buf, v) }
func (e *encoder) str(s string)          { e.uvarint(uint64(len(s))); e.buf = append(e.buf, s...) }
func (e *encoder) bytes(b []byte)        { e.uvarint(uint64(len(b))); e.buf = append(e.buf, b...) }
func (e *encoder) prefix(p netip.Prefix) { e.addr(p.Addr()); e.u8(byte(max(p.Bits(), 0))) }

func (e *encoder) boolean(b bool) {
	if b {
		e.u8(1)
		return
	}
	e.u8(0)
}

func (e *encoder) addr(a netip.Addr) {
	if !a.IsValid() {
		e.u8(0)
		return
	}
	b := a.AsSlice()
	e.u8(byte(len(b)))
	e.buf = append(e.buf, b...)
}

// decoder reads what encoder wrote. The first error sticks: later reads
// return zero values, so a decode function can read every field and check
// d.err once. Every length is checked against the bytes left and a limit
// before anything is allocated.
type decoder struct {
	buf []byte
	err error
}

func (d *decoder) fail(reason, format string, args ...any) {
	if d.err == nil {
		d.err = &decodeError{reason: reason, msg: fmt.Sprintf(format, args...)}
	}
}

func (d *decoder) u8() byte {
	if d.err != nil {
		return 0
	}
	if len(d.buf) < 1 {
		d.fail(dropMalformed, "truncated")
		return 0
	}
	v := d.buf[0]
	d.buf = d.buf[1:]
	return v
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.buf)
	if n <= 0 {
		d.fail(dropMalformed, "bad varint")
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

// count reads a length or element count and checks it against limit.
func (d *decoder) count(limit int, what string) int {
	v := d.uvarint()
	if d.err != nil {
		return 0
	}
	if v > uint64(limit) {
		d.fail(dropInvalid, "%s: %d exceeds limit %d", what, v, limit)
		return 0
	}
	return int(v)
}

func (d *decoder) raw(n int) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.buf) < n {
		d.fail(dropMalformed, "truncated: need %d bytes, have %d", n, len(d.buf))
		return nil
	}
	b := d.buf[:n]
	d.buf = d.buf[n:]
	return b
}

// str reads a string of at most limit bytes that is valid UTF-8 without
// control characters.
func (d *decoder) str(limit int, what string) string {
	n := d.count(limit, what+" length")
	b := d.raw(n)
	if d.err != nil {
		return ""
	}
	s := string(b)
	if err := checkText(s); err != nil {
		d.fail(dropInvalid, "%s: %v", what, err)
		return ""
	}
	return s
}

func (d *decoder) bytes(limit int, what string) []byte {
	n := d.count(limit, what+" length")
	b := d.raw(n)
	if d.err != nil || n == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}

// bytesFixed reads exactly n bytes.
func (d *decoder) bytesFixed(n int) []byte {
	b := d.raw(n)
	if d.err != nil {
		return nil
	}
	return append([]byte(nil), b...)
}

func (d *decoder) boolean() bool {
	switch d.u8() {
	case 0:
		return false
	case 1:
		return true
	default:
		d.fail(dropInvalid, "bad boolean")
		return false
	}
}

func (d *decoder) u16(what string) uint16 {
	v := d.uvarint()
	if v > 0xffff {
		d.fail(dropInvalid, "%s %d out of range", what, v)
	}
	return uint16(v)
}

func (d *decoder) addr() netip.Addr {
	n := d.u8()
	if d.err != nil || n == 0 {
		return netip.Addr{}
	}
	if n != 4 && n != 16 {
		d.fail(dropInvalid, "address length %d", n)
		return netip.Addr{}
	}
	b := d.raw(int(n))
	if d.err != nil {
		return netip.Addr{}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// prefix reads an address and a prefix length; host bits must be clear.
func (d *decoder) prefix() netip.Prefix {
	a := d.addr()
	bits := int(d.u8())
	if d.err != nil || !a.IsValid() {
		return netip.Prefix{}
	}
	p, err := a.Prefix(bits)
	if err != nil || p.Addr() != a {
		d.fail(dropInvalid, "prefix %s/%d is not a masked prefix", a, bits)
		return netip.Prefix{}
	}
	return p
}

// finish reports trailing bytes as malformed and returns the sticky error.
func (d *decoder) finish() error {
	if d.err == nil && len(d.buf) != 0 {
		d.fail(dropMalformed, "%d trailing bytes", len(d.buf))
	}
	return d.err
}

func checkText(s string) error {
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return errors.New("contains control characters")
		}
	}
	return nil
}
