//go:build linux

package bpf

import (
	"errors"
	"slices"
	"testing"
)

// TestGuardedHostPorts: a sandbox reaches the host and the outside as
// before, except fabric's own ports on a host address, which are dropped
// and counted as host-port.
func TestGuardedHostPorts(t *testing.T) {
	l := loadNAT(t)
	const gossip, tunnel, metrics = 7946, 4789, 9100
	pol := Policy{GuardTCP: []uint16{gossip, metrics}, GuardUDP: []uint16{gossip, tunnel}, TunnelPort: tunnel}
	if err := l.o.SetPolicy(pol); err != nil {
		t.Fatal(err)
	}
	tcp := func(dst any, dport uint16) []byte {
		f := flow{proto: protoTCP, src: a1.Addr, sport: 41000, dst: ip(dst.(string)), dport: dport, tcpFlags: tcpFlagSYN}
		return fromSandbox(a1, f)
	}
	udp := func(dst string, dport uint16) []byte {
		f := flow{proto: protoUDP, src: a1.Addr, sport: 41000, dst: ip(dst), dport: dport, payload: []byte("x")}
		return fromSandbox(a1, f)
	}
	gw := netA.Gateway.String()
	for _, c := range []struct {
		name   string
		pkt    []byte
		ret    uint32
		reason Reason
	}{
		{"gossip TCP on the gateway", tcp(gw, gossip), tcActShot, ReasonHostPort},
		{"gossip UDP on the uplink address", udp(hostAddr.String(), gossip), tcActShot, ReasonHostPort},
		{"tunnel port on the uplink address", udp(hostAddr.String(), tunnel), tcActShot, ReasonHostPort},
		{"tunnel port on another network's gateway", udp(netB.Gateway.String(), tunnel), tcActShot, ReasonHostPort},
		{"metrics on loopback", tcp("127.0.0.1", metrics), tcActShot, ReasonHostPort},
		{"tunnel port as subnet broadcast", udp("10.1.0.255", tunnel), tcActShot, ReasonHostPort},
		{"tunnel port as limited broadcast", udp("255.255.255.255", tunnel), tcActShot, ReasonHostPort},
		{"another host port: to the host", tcp(gw, 22), tcActOK, ReasonToHost},
		{"metrics port over UDP: not guarded", udp(gw, metrics), tcActOK, ReasonToHost},
		{"gossip port of a server outside: to the host (routed)", tcp(outside.String(), gossip), tcActOK, ReasonToHost},
		{"tunnel port of another node: dropped (it would come from this host)", udp(outside.String(), tunnel), tcActShot, ReasonHostPort},
		{"TCP to an outside tunnel port number: to the host", tcp(outside.String(), tunnel), tcActOK, ReasonToHost},
	} {
		t.Run(c.name, func(t *testing.T) {
			runCounted(t, l.o, a1.HostIfindex, c.pkt, c.ret, c.reason)
		})
	}

	got, err := l.o.Policy()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.GuardTCP, pol.GuardTCP) || !slices.Equal(got.GuardUDP, pol.GuardUDP) || got.TunnelPort != pol.TunnelPort {
		t.Errorf("policy read back %+v, want %+v", got, pol)
	}
	for _, bad := range []Policy{{GuardTCP: []uint16{1, 2, 3, 4, 5}}, {GuardUDP: []uint16{0}}} {
		if err := l.o.SetPolicy(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("SetPolicy(%+v): %v, want ErrInvalid", bad, err)
		}
	}
	if err := l.o.SetPolicy(Policy{}); err != nil {
		t.Fatal(err)
	}
	runCounted(t, l.o, a1.HostIfindex, tcp(gw, gossip), tcActOK, ReasonToHost)
}

// TestConntrackQuota: a source past its quota of unanswered connections
// has its new ones dropped (ct-quota), wherever they are made (hairpin,
// published port from outside, masquerade); answered ones give the quota
// back; other sources and established connections are untouched.
func TestConntrackQuota(t *testing.T) {
	l := loadNAT(t)
	const quota = 3
	if err := l.o.SetPolicy(Policy{CTPendingMax: quota}); err != nil {
		t.Fatal(err)
	}
	syn := func(src Endpoint, sport uint16) flow {
		return flow{proto: protoTCP, src: src.Addr, sport: sport, dst: hostAddr, dport: 8080, tcpFlags: tcpFlagSYN}
	}
	t.Run("hairpin", func(t *testing.T) {
		for i := range quota {
			l.expect(t, hookFromEndpoint, a1.HostIfindex, fromSandbox(a1, syn(a1, uint16(42000+i))), tcActRedirect, ReasonHairpin)
		}
		l.expect(t, hookFromEndpoint, a1.HostIfindex, fromSandbox(a1, syn(a1, 42100)), tcActShot, ReasonCTQuota)
		// A retransmitted SYN of a stored connection is no new one.
		l.expect(t, hookFromEndpoint, a1.HostIfindex, fromSandbox(a1, syn(a1, 42000)), tcActRedirect, ReasonHairpin)
		// Another source has its own quota.
		l.expect(t, hookFromEndpoint, b1.HostIfindex, fromSandbox(b1, syn(b1, 42000)), tcActRedirect, ReasonHairpin)

		// The handshake of one completes: SYN-ACK back, then the ACK.
		in := syn(a1, 42000).with(a1.Addr, 42000, a2.Addr, 80)
		synack := in.reply()
		synack.tcpFlags = tcpFlagSYN | tcpFlagACK
		l.expect(t, hookFromEndpoint, a2.HostIfindex, fromSandbox(a2, synack), tcActRedirect, ReasonDNATReply)
		ack := syn(a1, 42000)
		ack.tcpFlags = tcpFlagACK
		l.expect(t, hookFromEndpoint, a1.HostIfindex, fromSandbox(a1, ack), tcActRedirect, ReasonHairpin)
		// That gave one back.
		l.expect(t, hookFromEndpoint, a1.HostIfindex, fromSandbox(a1, syn(a1, 42101)), tcActRedirect, ReasonHairpin)
		l.expect(t, hookFromEndpoint, a1.HostIfindex, fromSandbox(a1, syn(a1, 42102)), tcActShot, ReasonCTQuota)
		// The established connection still flows.
		l.expect(t, hookFromEndpoint, a1.HostIfindex, fromSandbox(a1, ack), tcActRedirect, ReasonHairpin)
	})
	t.Run("published port from outside", func(t *testing.T) {
		for i := range quota {
			f := flow{proto: protoTCP, src: outside, sport: uint16(43000 + i), dst: hostAddr, dport: 8080, tcpFlags: tcpFlagSYN}
			l.expect(t, hookFromUplink, uplinkIfindex, fromOutside(f), tcActRedirect, ReasonDNAT)
		}
		f := flow{proto: protoTCP, src: outside, sport: 43100, dst: hostAddr, dport: 8080, tcpFlags: tcpFlagSYN}
		l.expect(t, hookFromUplink, uplinkIfindex, fromOutside(f), tcActShot, ReasonCTQuota)
	})
	t.Run("masquerade", func(t *testing.T) {
		// b1 used one on the hairpin above, in this window.
		for i := range quota - 1 {
			f := flow{proto: protoTCP, src: b1.Addr, sport: uint16(44000 + i), dst: outside, dport: 443, tcpFlags: tcpFlagSYN}
			l.expect(t, hookToUplink, uplinkIfindex, toOutside(f), tcActOK, ReasonSNAT)
		}
		f := flow{proto: protoTCP, src: b1.Addr, sport: 44100, dst: outside, dport: 443, tcpFlags: tcpFlagSYN}
		l.expect(t, hookToUplink, uplinkIfindex, toOutside(f), tcActShot, ReasonCTQuota)
	})
}
