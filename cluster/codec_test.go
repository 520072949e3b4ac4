package cluster

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/hashicorp/memberlist"
)

// sampleMessages holds one message of every kind; they seed the fuzzer.
func sampleMessages() []message {
	spec := NetworkSpec{Name: "blue", Subnet: netip.MustParsePrefix("10.1.0.0/16"), VNI: 4242, Options: map[string]string{"mtu": "1450", "a": ""}}
	_ = spec.normalize()
	netRec := &netRecord{Net: Network{ID: NetworkID{Clock: 7, Node: "a"}, NetworkSpec: spec}}
	tomb := &netRecord{Net: netRec.Net, Deleted: true, DelVer: version{Clock: 9, Node: "b"}, Reason: reasonConflict, Winner: NetworkID{Clock: 3, Node: "c"}}
	removed := &netRecord{Net: netRec.Net, Deleted: true, DelVer: version{Clock: 9, Node: "b"}, Reason: reasonRemoved}
	ep := &epRecord{Ver: version{Clock: 11, Node: "a"}, EP: Endpoint{ID: "c1", Network: "blue", Node: "a",
		IP: netip.MustParseAddr("10.1.2.3"), MAC: net.HardwareAddr{2, 1, 2, 3, 4, 5}, Name: "web", Aliases: []string{"www", "api"}}}
	lease := &leaseRecord{Ver: version{Clock: 12, Node: "a"}, Net: netRec.Net.ID, Block: netip.MustParsePrefix("10.1.2.0/24"), Node: "a"}
	claim := &claimRecord{Ver: version{Clock: 13, Node: "b"}, Deleted: true, Net: netRec.Net.ID, IP: netip.MustParseAddr("10.1.9.9"), Node: "a", Owner: "db"}
	return []message{
		{Type: msgRecord, Record: &record{net: netRec}},
		{Type: msgRecord, Record: &record{net: tomb}},
		{Type: msgRecord, Record: &record{net: removed}},
		{Type: msgRecord, Record: &record{ep: ep}},
		{Type: msgRecord, Record: &record{lease: lease}},
		{Type: msgRecord, Record: &record{claim: claim}},
		{Type: msgRequest, Request: &request{ID: 1, From: "a", Op: opClaim, Res: resKey{Kind: resBlock, Net: netRec.Net.ID, P: lease.Block}}},
		{Type: msgRequest, Request: &request{ID: 2, From: "a", Op: opAbort, Res: resKey{Kind: resIP, Net: netRec.Net.ID, P: netip.MustParsePrefix("10.1.9.9/32")}, Owner: "db"}},
		{Type: msgRequest, Request: &request{ID: 3, From: "a", Op: opPropose, Net: netRec}},
		{Type: msgRequest, Request: &request{ID: 4, From: "a", Op: opKeyInstall, Key: bytes.Repeat([]byte{7}, 16)}},
		{Type: msgResponse, Response: &response{ID: 3, From: "b", Reason: "clash", Records: []record{{net: tomb}}}},
		{Type: msgState, State: &stateMsg{Clock: 13, Records: []record{{net: netRec}, {ep: ep}, {lease: lease}, {claim: claim}}}},
		{Type: msgSnapshot, Snapshot: &snapshot{Node: "a", Clock: 13, Version: 5, Taken: 1700000000,
			Records: []record{{net: netRec}}, Allocs: []alloc{{Net: netRec.Net.ID, IP: netip.MustParseAddr("10.1.2.4"), Owner: "x"}}}},
		{Type: msgLeave, Leave: &leaveIntent{Node: "a", Stamp: 99}},
	}
}

func TestCodecRoundTrip(t *testing.T) {
	for _, m := range sampleMessages() {
		b := encodeMessage(m)
		got, err := decodeMessage(b)
		if err != nil {
			t.Fatalf("type %d: %v", m.Type, err)
		}
		if again := encodeMessage(got); !bytes.Equal(again, b) {
			t.Errorf("type %d: round trip differs:\n%x\n%x", m.Type, b, again)
		}
	}
	// A lease record is a few dozen bytes plus its signature: gossip
	// packets carry many.
	if n := len(encodeMessage(sampleMessages()[4])); n > 40+sigSize {
		t.Errorf("lease record is %d bytes", n)
	}
}

func TestDecodeRejects(t *testing.T) {
	good := encodeMessage(sampleMessages()[3]) // endpoint record
	cases := map[string]struct {
		b      []byte
		reason string
	}{
		"empty":        {nil, dropMalformed},
		"version":      {append([]byte{9}, good[1:]...), dropVersion},
		"type":         {[]byte{codecVersion, 99, 0}, dropUnknownType},
		"truncated":    {good[:len(good)-3], dropMalformed},
		"trailing":     {append(append([]byte{}, good...), 0), dropMalformed},
		"oversized":    {append([]byte{codecVersion, byte(msgRecord)}, make([]byte, maxMsgBytes)...), dropOversized},
		"huge-count":   {[]byte{codecVersion, byte(msgState), 1, 0xff, 0xff, 0xff, 0xff, 0x0f}, dropInvalid},
		"bad-kind":     {[]byte{codecVersion, byte(msgRecord), 77}, dropUnknownType},
		"bad-varint":   {[]byte{codecVersion, byte(msgState), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, dropMalformed},
		"forged-owner": {encodeMessage(message{Type: msgRecord, Record: &record{lease: &leaseRecord{Ver: version{Clock: 1, Node: "evil"}, Net: NetworkID{Clock: 1, Node: "a"}, Block: netip.MustParsePrefix("10.0.0.0/24"), Node: "a"}}}), dropInvalid},
		"host-bits":    {encodeMessage(message{Type: msgRecord, Record: &record{lease: &leaseRecord{Ver: version{Clock: 1, Node: "a"}, Net: NetworkID{Clock: 1, Node: "a"}, Block: netip.PrefixFrom(netip.MustParseAddr("10.0.0.1"), 24), Node: "a"}}}), dropInvalid},
	}
	for name, tc := range cases {
		_, err := decodeMessage(tc.b)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if got := dropReason(err); got != tc.reason {
			t.Errorf("%s: reason %q (%v), want %q", name, got, err, tc.reason)
		}
	}
}

// Garbage sent to a live member over both gossip paths is dropped and
// counted, and the member keeps working.
func TestMalformedMessagesDropped(t *testing.T) {
	members := startCluster(t, 2)
	target := members[1]
	node := memberlist.Node{Name: target.Name(), Addr: target.Addr().Addr().AsSlice(), Port: target.Addr().Port()}
	garbage := [][]byte{
		{},
		{codecVersion},
		{42, 1, 2, 3},
		{codecVersion, 99},
		{codecVersion, byte(msgRecord), 1, 0xff},
		append([]byte{codecVersion, byte(msgRecord)}, bytes.Repeat([]byte{0xff}, 70<<10)...),
		encodeMessage(sampleMessages()[3])[:20],
	}
	for i, g := range garbage {
		if err := members[0].ml.SendReliable(&node, g); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		if len(g) < 1000 {
			if err := members[0].ml.SendBestEffort(&node, g); err != nil {
				t.Fatalf("send best effort %d: %v", i, err)
			}
		}
	}
	// Push/pull state that does not decode is dropped too.
	target.mergeRemoteState([]byte{codecVersion, byte(msgState), 0xff})
	target.mergeRemoteState(encodeMessage(sampleMessages()[0]))

	netnstest.Eventually(t, 5*time.Second, "drops counted", func() bool {
		s := target.Stats()
		total := uint64(0)
		for _, n := range s.Dropped {
			total += n
		}
		return total >= 10 && s.Dropped[dropOversized] >= 1 && s.Dropped[dropVersion] >= 1 && s.Dropped[dropUnknownType] >= 1
	})
	t.Logf("stats: %+v", target.Stats())
	createNetwork(t, members, "still-works", "10.80.0.0/16")
}

func FuzzDecode(f *testing.F) {
	for _, m := range sampleMessages() {
		f.Add(encodeMessage(m))
	}
	meta, _ := encodeMeta(NodeMeta{Name: "a", Addr: netip.MustParseAddr("10.0.0.1"), TunnelPort: 4789, Datapath: "ebpf", Version: "1"})
	f.Add(meta)
	f.Add([]byte{codecVersion, byte(msgState), 1, 0xff, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, err := decodeMeta(b); err == nil {
			again, err := encodeMeta(m)
			if err != nil {
				t.Fatalf("decoded metadata does not encode: %v", err)
			}
			if m2, err := decodeMeta(again); err != nil || m2 != m {
				t.Fatalf("metadata round trip: %+v %v", m2, err)
			}
		}
		m, err := decodeMessage(b)
		if err != nil {
			if dropReason(err) == "" {
				t.Fatal("error without a reason")
			}
			return
		}
		// What decodes re-encodes to something that decodes to the same.
		enc := encodeMessage(m)
		m2, err := decodeMessage(enc)
		if err != nil {
			t.Fatalf("re-encoded message does not decode: %v", err)
		}
		if !bytes.Equal(encodeMessage(m2), enc) {
			t.Fatal("encoding is not stable")
		}
		// And a state machine swallows it without panicking.
		s := newState("fuzz", func(Event) {})
		switch {
		case m.Record != nil:
			s.remote(*m.Record, true, authUnknown)
		case m.State != nil:
			s.merge(m.State.Clock, m.State.Records, nil)
		case m.Request != nil && m.Request.Op == opClaim:
			s.vote(m.Request.Res, m.Request.From, time.Second)
		case m.Request != nil && m.Request.Op == opPropose:
			s.proposal(m.Request.Net, authOK)
		case m.Snapshot != nil:
			s.merge(m.Snapshot.Clock, m.Snapshot.Records, nil)
		}
		checkAccounting(t, s)
	})
}

// checkAccounting recounts what the caps are checked against.
func checkAccounting(t *testing.T, s *state) {
	t.Helper()
	owned := make(map[ownerCount]int)
	total, size := 0, 0
	for _, r := range s.records() {
		if r.net == nil {
			kind, node := r.owner()
			owned[ownerCount{kind, node}]++
			total++
		}
		size += recordSize(r)
	}
	if total != s.total || size != s.bytes || len(owned) != len(s.owned) {
		t.Fatalf("accounting: total %d/%d, bytes %d/%d, owners %d/%d", s.total, total, s.bytes, size, len(s.owned), len(owned))
	}
	for k, n := range owned {
		if s.owned[k] != n {
			t.Fatalf("accounting: %v has %d, counted %d", k, s.owned[k], n)
		}
	}
	if total > maxTotalRecords || size > stateBudget+maxMsgBytes {
		t.Fatalf("state over its caps: %d records, %d bytes", total, size)
	}
}
