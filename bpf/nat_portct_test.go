//go:build linux

package bpf

import (
	"net/netip"
	"testing"
)

// portCtCase is one connection to a published port and where its two
// conntrack entries must be: the original keyed as the client sent it (in
// the direction origDir), the reply keyed from the target back to the
// client (always CT_DIR_OUT: the target is a local endpoint).
type portCtCase struct {
	name     string
	kind     endpointCtKind
	origDir  endpointCtDir
	client   netip.Addr // the source the target sees
	f        flow       // the client's SYN to the published port
	target   Endpoint
	port     uint16
	openHook hook // where the client's packets are translated
	openIf   int
	openRet  uint32
	openWhy  Reason
	// sendReply runs the target's SYN-ACK through the programs.
	sendReply func(t *testing.T, l *natLab, synAck flow, back flow)
	// frame is the client's packet as the opening hook sees it.
	frame func(f flow) []byte
}

// TestPublishedPortConntrackEntries: the two entries ct_open_port makes
// for a DNAT connection (uplink) and a hairpin one (endpoint) have the
// exact keys, addresses and directions the lookups and the refresh rely
// on: each entry names the other's key direction (rev_dir), so an answer
// through the reply entry marks the original one replied, and the
// original side's acknowledgement reaches the reply entry too. A wrong
// direction here leaves one half of the connection on the short SYN
// timeout while the other is established, with no packet going wrong at
// first, so the packet tests alone do not see it.
func TestPublishedPortConntrackEntries(t *testing.T) {
	l := loadNAT(t)
	dnat := flow{proto: protoTCP, src: outside, sport: 51000, dst: hostAddr, dport: 8080, tcpFlags: tcpFlagSYN}
	hairpin := flow{proto: protoTCP, src: b1.Addr, sport: 47000, dst: hostAddr, dport: 8080, tcpFlags: tcpFlagSYN}
	for _, c := range []portCtCase{
		{
			name: "dnat from the uplink", kind: endpointCtKindCT_KIND_DNAT, origDir: endpointCtDirCT_DIR_IN,
			client: outside, f: dnat, target: a2, port: 80,
			openHook: hookFromUplink, openIf: uplinkIfindex, openRet: tcActRedirect, openWhy: ReasonDNAT,
			frame: fromOutside,
			sendReply: func(t *testing.T, l *natLab, synAck, back flow) {
				l.expectOut(t, hookFromEndpoint, a2.HostIfindex, fromSandbox(a2, synAck), tcActOK, ReasonToHost, nil)
				l.expectOut(t, hookToUplink, uplinkIfindex, toOutside(synAck), tcActOK, ReasonDNATReply, toOutside(back))
			},
		},
		{
			name: "hairpin from an endpoint", kind: endpointCtKindCT_KIND_HAIRPIN, origDir: endpointCtDirCT_DIR_OUT,
			client: b1.Addr, f: hairpin, target: a2, port: 80,
			openHook: hookFromEndpoint, openIf: b1.HostIfindex, openRet: tcActRedirect, openWhy: ReasonHairpin,
			frame: func(f flow) []byte { return fromSandbox(b1, f) },
			sendReply: func(t *testing.T, l *natLab, synAck, back flow) {
				l.expectOut(t, hookFromEndpoint, a2.HostIfindex, fromSandbox(a2, synAck), tcActRedirect, ReasonDNATReply, toSandbox(b1, back))
			},
		},
	} {
		t.Run(c.name, func(t *testing.T) { testPortCt(t, l, c) })
	}
}

func testPortCt(t *testing.T, l *natLab, c portCtCase) {
	f := c.f
	in := f.with(c.client, f.sport, c.target.Addr, c.port)
	l.expect(t, c.openHook, c.openIf, c.frame(f), c.openRet, c.openWhy)

	origKey := ctKey(f.proto, f.src, f.sport, f.dst, f.dport, c.origDir)
	replyKey := ctKey(f.proto, c.target.Addr, c.port, c.client, f.sport, endpointCtDirCT_DIR_OUT)
	wantOrig := endpointCtEntry{Saddr: be32(c.client), Daddr: be32(c.target.Addr), Sport: be16(f.sport), Dport: be16(c.port),
		Kind: uint8(c.kind), Flags: ctFlagSynSent, Reply: 0, RevDir: uint8(endpointCtDirCT_DIR_OUT)}
	wantReply := endpointCtEntry{Saddr: be32(f.dst), Daddr: be32(f.src), Sport: be16(f.dport), Dport: be16(f.sport),
		Kind: uint8(c.kind), Flags: ctFlagSynSent, Reply: 1, RevDir: uint8(c.origDir)}
	check := func(stage string, k endpointCtKey, want endpointCtEntry) {
		t.Helper()
		got, ok := l.ct(t, k)
		if !ok {
			t.Fatalf("%s: no entry under %+v", stage, k)
		}
		got.LastSeen = 0
		if got != want {
			t.Errorf("%s: entry %+v is\n %+v, want\n %+v", stage, k, got, want)
		}
	}
	check("after the SYN, original", origKey, wantOrig)
	check("after the SYN, reply", replyKey, wantReply)

	// The target answers: the reply entry finds the original through its
	// rev_dir and marks it replied too.
	synAck := in.reply()
	synAck.tcpFlags = tcpFlagSYN | tcpFlagACK
	back := f.reply()
	back.tcpFlags = tcpFlagSYN | tcpFlagACK
	c.sendReply(t, l, synAck, back)
	wantOrig.Flags, wantReply.Flags = ctFlagReplied|ctFlagSynSent, ctFlagReplied|ctFlagSynSent
	check("after the SYN-ACK, original", origKey, wantOrig)
	check("after the SYN-ACK, reply", replyKey, wantReply)

	// The client acknowledges: the original entry finds the reply one.
	ack := f
	ack.tcpFlags = tcpFlagACK
	l.expect(t, c.openHook, c.openIf, c.frame(ack), c.openRet, c.openWhy)
	wantOrig.Flags, wantReply.Flags = ctFlagReplied, ctFlagReplied
	check("established, original", origKey, wantOrig)
	check("established, reply", replyKey, wantReply)
}
