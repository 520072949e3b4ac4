package kernel

import (
	"net"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Small builders for the expressions of the fabric table. Each returns the
// expressions of one match or action; cat joins them into a rule.

const ipsDstNAT = 1 << 5 // IPS_DST_NAT in the conntrack status bits

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// ifname pads an interface name the way the kernel stores it.
func ifname(name string) []byte {
	b := make([]byte, ifNameBytes)
	copy(b, name)
	return b
}

func cmpOp(eq bool) expr.CmpOp {
	if eq {
		return expr.CmpOpEq
	}
	return expr.CmpOpNeq
}

func matchIif(name string, eq bool) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: cmpOp(eq), Register: 1, Data: ifname(name)},
	}
}

func matchOif(name string, eq bool) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: cmpOp(eq), Register: 1, Data: ifname(name)},
	}
}

// lookupIif matches an input interface in a named set.
func lookupIif(set string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: set},
	}
}

// lookupOif matches an output interface in a named set; queueRuleset fills
// in the set's transaction ID.
func lookupOif(set string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: set},
	}
}

// matchCtBits matches when any of bits is set in the conntrack key (or,
// with anySet false, when none is).
func matchCtBits(key expr.CtKey, bits uint32, anySet bool) []expr.Any {
	zero := []byte{0, 0, 0, 0}
	return []expr.Any{
		&expr.Ct{Register: 1, Key: key},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: zero},
		&expr.Cmp{Op: cmpOp(!anySet), Register: 1, Data: zero},
	}
}

func matchCtState(bits uint32) []expr.Any { return matchCtBits(expr.CtKeySTATE, bits, true) }

func matchCtStateNone(bits uint32) []expr.Any { return matchCtBits(expr.CtKeySTATE, bits, false) }

// matchCtDNAT matches connections whose destination was rewritten: the
// packets of published ports.
func matchCtDNAT() []expr.Any { return matchCtBits(expr.CtKeySTATUS, ipsDstNAT, true) }

// matchAddr matches the IPv4 source (offset 12) or destination (offset 16)
// against a prefix.
func matchAddr(offset uint32, ip []byte, bits int) []expr.Any {
	if bits == 0 {
		return nil
	}
	out := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4}}
	want := net.IP(ip).To4().Mask(net.CIDRMask(bits, 32))
	if bits < 32 {
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: net.CIDRMask(bits, 32), Xor: []byte{0, 0, 0, 0}})
	}
	return append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(want)})
}

// matchLocalDst is `fib daddr type local`: any address of the host,
// including 127.0.0.1 and the bridges' gateways.
func matchLocalDst() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}
}

func matchL4(proto byte, dport uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(dport)},
	}
}

func masq() []expr.Any { return []expr.Any{&expr.Masq{}} }

func accept() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}} }

func counterDrop() []expr.Any {
	return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}
}
