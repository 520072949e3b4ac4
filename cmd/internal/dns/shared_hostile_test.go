package dns

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// sharedLab is a shared resolver on loopback whose sandboxes own
// loopback source addresses (127.0.0.0/8 is all local, so a client can
// send from any of them), forwarding to a fake upstream that answers every
// A question with upstreamAnswer.
type sharedLab struct {
	addr string
	up   *fakeUpstream
	mu   sync.Mutex
	own  map[netip.Addr]string // source address → sandbox
	// asked are the sources the querier was asked about, in order.
	asked []netip.Addr
}

var upstreamAnswer = ip("192.0.2.53")

func newSharedLab(t *testing.T) *sharedLab {
	t.Helper()
	l := &sharedLab{up: startUpstream(t, "127.0.0.1", upstreamAnswer), own: map[netip.Addr]string{
		ip("127.0.0.2"): "ui", // on network front
		ip("127.0.0.3"): "db", // on network back
	}}
	s := newTestServer(t, Config{Upstreams: []string{l.up.addr}})
	pc, ln, err := listenPair("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.addr = pc.LocalAddr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.ServeShared(ctx, pc, ln, func(src netip.Addr) (string, bool) {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.asked = append(l.asked, src)
			sb, ok := l.own[src]
			return sb, ok
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeShared: %v", err)
		}
	})
	return l
}

// ask sends one question from src over network ("udp" or "tcp").
func (l *sharedLab) ask(t *testing.T, src netip.Addr, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	var local net.Addr = &net.UDPAddr{IP: src.AsSlice()}
	if network == "tcp" {
		local = &net.TCPAddr{IP: src.AsSlice()}
	}
	c := dns.Client{Net: network, Timeout: 5 * time.Second, Dialer: &net.Dialer{LocalAddr: local, Timeout: 5 * time.Second}}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	r, _, err := c.Exchange(m, l.addr)
	if err != nil {
		t.Fatalf("%s from %s over %s: %v", name, src, network, err)
	}
	return r
}

// TestServeSharedHostile: what a stranger or a sandbox can get out of the
// shared resolver. A source no sandbox owns is refused for every kind of
// question, local names and upstream ones alike, and nothing is forwarded
// for it (the resolver is not an open relay into the upstreams); a
// sandbox gets only its own view: names of networks it is not on, by
// name, alias or reverse lookup, are forwarded as unknown, never answered
// with the other network's addresses; a sandbox gone is a stranger at once.
func TestServeSharedHostile(t *testing.T) {
	l := newSharedLab(t)
	stranger, ui, db := ip("127.0.0.9"), ip("127.0.0.2"), ip("127.0.0.3")

	for _, network := range []string{"udp", "tcp"} {
		for _, q := range []struct {
			name  string
			qtype uint16
		}{
			{"web", dns.TypeA}, {"db", dns.TypeA}, {"database", dns.TypeANY}, {"example.com", dns.TypeA},
			{"4.0.2.10.in-addr.arpa", dns.TypePTR},
		} {
			r := l.ask(t, stranger, network, q.name, q.qtype)
			if r.Rcode != dns.RcodeRefused || len(r.Answer) != 0 {
				t.Errorf("stranger %s %s over %s: rcode %s, %d answers; want REFUSED and nothing", q.name, dns.TypeToString[q.qtype], network, dns.RcodeToString[r.Rcode], len(r.Answer))
			}
		}
	}
	if n := l.up.queries.Load(); n != 0 {
		t.Errorf("%d queries of strangers forwarded upstream, want none", n)
	}

	// Each sandbox sees only its own networks; another network's names are
	// unknown to it (the upstream answers them), whichever sandbox asked
	// last.
	for _, c := range []struct {
		src        netip.Addr
		name       string
		want, leak []netip.Addr
	}{
		{ui, "web", []netip.Addr{ip("10.1.0.2")}, []netip.Addr{ip("10.2.0.2")}},
		{db, "web", []netip.Addr{ip("10.2.0.2")}, []netip.Addr{ip("10.1.0.2")}},
		{ui, "db", []netip.Addr{upstreamAnswer}, []netip.Addr{ip("10.2.0.4")}},
		{ui, "database", []netip.Addr{upstreamAnswer}, []netip.Addr{ip("10.2.0.4")}},
		{ui, "api", []netip.Addr{upstreamAnswer}, []netip.Addr{ip("10.2.0.5"), ip("10.2.0.6")}},
		{db, "ui", []netip.Addr{upstreamAnswer}, []netip.Addr{ip("10.1.0.3")}},
	} {
		for _, network := range []string{"udp", "tcp"} {
			got := answerAddrs(l.ask(t, c.src, network, c.name, dns.TypeA))
			if !slices.Equal(sorted(got), sorted(c.want)) {
				t.Errorf("%s asked by %s over %s: %v, want %v", c.name, c.src, network, got, c.want)
			}
			for _, a := range c.leak {
				if slices.Contains(got, a) {
					t.Errorf("%s asked by %s over %s leaked %s of a network it is not on", c.name, c.src, network, a)
				}
			}
		}
	}
	// Reverse lookups of another network's address name nothing local.
	r := l.ask(t, ui, "udp", "4.0.2.10.in-addr.arpa", dns.TypePTR)
	for _, rr := range r.Answer {
		if p, ok := rr.(*dns.PTR); ok && (p.Ptr == "db." || p.Ptr == "database.") {
			t.Errorf("ui's reverse lookup of db's address answered %s", p.Ptr)
		}
	}

	// A sandbox removed: its address is a stranger's at once.
	l.mu.Lock()
	delete(l.own, ui)
	l.mu.Unlock()
	if r := l.ask(t, ui, "udp", "web", dns.TypeA); r.Rcode != dns.RcodeRefused || len(r.Answer) != 0 {
		t.Errorf("address of a removed sandbox: rcode %s, answers %v; want REFUSED", dns.RcodeToString[r.Rcode], r.Answer)
	}

	// The querier saw the real source of every question.
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, src := range l.asked {
		if src != stranger && src != ui && src != db {
			t.Errorf("the querier was asked about %s, a source nobody sent from", src)
		}
	}
}
