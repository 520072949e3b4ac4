package dns

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
)

// A shared address answers each query with the view of the sandbox that
// owns the source address, and refuses sources that are no sandbox's.
func TestServeSharedAnswersForTheAskingSandbox(t *testing.T) {
	s := newTestServer(t, Config{})
	pc, ln, err := listenPair("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	var asker atomic.Value
	asker.Store("ui") // on network front only
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.ServeShared(ctx, pc, ln, func(src netip.Addr) (string, bool) {
			name := asker.Load().(string)
			return name, name != "" && src == netip.MustParseAddr("127.0.0.1")
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeShared: %v", err)
		}
	})
	query := func(proto, name string) *dns.Msg {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(name+".", dns.TypeA)
		c := &dns.Client{Net: proto}
		r, _, err := c.Exchange(m, addr)
		if err != nil {
			t.Fatalf("%s query %s: %v", proto, name, err)
		}
		return r
	}
	for _, proto := range []string{"udp", "tcp"} {
		r := query(proto, "web")
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "10.1.0.2" {
			t.Fatalf("%s: web asked by ui: %v, want only 10.1.0.2 (ui's network)", proto, r)
		}
	}
	asker.Store("db") // on network back
	if r := query("udp", "web"); len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "10.2.0.2" {
		t.Fatalf("web asked by db: %v, want 10.2.0.2", r)
	}
	asker.Store("")
	if r := query("udp", "web"); r.Rcode != dns.RcodeRefused {
		t.Fatalf("a source that is no sandbox's: rcode %d, want REFUSED", r.Rcode)
	}
}
