package dns

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestForwardFairShare: one sandbox sends 300 queries at once for names a
// silent upstream never answers; it may hold only its share of the 256
// forwarding slots, and another sandbox's query is still forwarded and
// answered at once.
func TestForwardFairShare(t *testing.T) {
	up := startUpstreamWith(t, "127.0.0.1", "0", func(w dns.ResponseWriter, r *dns.Msg) {
		if strings.HasPrefix(r.Question[0].Name, "slow") {
			return // silent
		}
		answerWith(ip("192.0.2.9"))(w, r)
	})
	s := newTestServer(t, Config{Upstreams: []string{up.addr}, UpstreamTimeout: 10 * time.Second})
	ui, db := attach(t, s, "ui"), attach(t, s, "db")

	c, err := net.Dial("udp", ui)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// 300 queries in flight or refused; sent a few at a time so that a
	// loaded machine does not drop them from the socket's buffer (a lost
	// one is sent again).
	taken := func() int { st := s.Stats(); return st.Inflight + int(st.InflightRejected) }
	deadline := time.Now().Add(20 * time.Second)
	last, progress := 0, time.Now()
	for sent := 0; taken() < 300; {
		if time.Now().After(deadline) || sent > 1000 {
			t.Fatalf("the flood was not taken in: %d of %d sent", taken(), sent)
		}
		if n := taken(); n != last {
			last, progress = n, time.Now()
		}
		if sent-last >= 16 {
			if time.Since(progress) > 500*time.Millisecond {
				sent = last // lost from the buffer: send those again
			}
			time.Sleep(time.Millisecond)
			continue
		}
		m := new(dns.Msg).SetQuestion(dns.Fqdn("slow"+strings.Repeat("x", sent%7)+".example"), dns.TypeA)
		m.Id = uint16(sent + 1)
		b, _ := m.Pack()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		sent++
	}
	st := s.Stats()
	if st.Inflight > 128 {
		t.Fatalf("one sandbox holds %d forwarding slots, want at most its share of 128", st.Inflight)
	}
	start := time.Now()
	r := query(t, db, "udp", "fast.example.", dns.TypeA)
	if !slices.Equal(answerAddrs(r), []netip.Addr{ip("192.0.2.9")}) || time.Since(start) > 3*time.Second {
		t.Fatalf("other sandbox during the flood: %s %v after %v, want the upstream's answer at once",
			dns.RcodeToString[r.Rcode], answerAddrs(r), time.Since(start))
	}
	// The flooder itself is refused beyond its share, at once.
	start = time.Now()
	if r := query(t, ui, "udp", "slowest.example.", dns.TypeA); r.Rcode != dns.RcodeServerFailure || time.Since(start) > 3*time.Second {
		t.Fatalf("flooder's next query: %s after %v, want SERVFAIL at once", dns.RcodeToString[r.Rcode], time.Since(start))
	}
}

func TestSharesTakeGive(t *testing.T) {
	var sh shares
	got := 0
	for sh.take("a", 256) {
		got++
		if got > 300 {
			break
		}
	}
	if got != 128 {
		t.Fatalf("one sandbox alone got %d slots, want 128 (half, one share kept free)", got)
	}
	// b arrives: its share is 256/3 = 85.
	for range 85 {
		if !sh.take("b", 256) {
			t.Fatal("b refused within its share")
		}
	}
	if sh.take("b", 256) {
		t.Fatal("b got more than its share")
	}
	for range 128 {
		sh.give("a")
	}
	if _, ok := sh.waiting["a"]; ok {
		t.Fatal("a still counted after giving back every slot")
	}
	// A tiny total still leaves every sandbox minShare.
	var small shares
	for range minShare {
		if !small.take("x", 2) {
			t.Fatal("minShare not granted")
		}
	}
}

// TestNoForwardingSandbox: a sandbox marked as not forwarding (only on
// internal networks) gets REFUSED at once for outside names, and never
// reaches the upstream; its networks' names still resolve.
func TestNoForwardingSandbox(t *testing.T) {
	up := startUpstream(t, "127.0.0.1", ip("192.0.2.7"))
	s := newTestServer(t, Config{Upstreams: []string{up.addr}})
	ui := attach(t, s, "ui")
	s.SetForwarding("ui", false)
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{"example.com.", dns.TypeA}, {"db.", dns.TypeA}, {"1.2.0.192.in-addr.arpa.", dns.TypePTR}} {
		if r := query(t, ui, "udp", q.name, q.qtype); r.Rcode != dns.RcodeRefused {
			t.Errorf("%s from a non-forwarding sandbox: %s, want REFUSED", q.name, dns.RcodeToString[r.Rcode])
		}
	}
	if r := query(t, ui, "tcp", "web.", dns.TypeA); len(r.Answer) != 1 {
		t.Errorf("web (same network) from a non-forwarding sandbox: %v, want its address", answerAddrs(r))
	}
	if n := up.queries.Load(); n != 0 {
		t.Errorf("upstream got %d queries from a non-forwarding sandbox", n)
	}
	s.SetForwarding("ui", true)
	if r := query(t, ui, "udp", "example.com.", dns.TypeA); len(r.Answer) != 1 {
		t.Errorf("after SetForwarding(true): %s %v", dns.RcodeToString[r.Rcode], answerAddrs(r))
	}
}

// TestTableDropsMultiLabelNames: names are single labels; a record for
// github.com (an alias, or a gossiped name) never enters the table.
func TestTableDropsMultiLabelNames(t *testing.T) {
	tb := NewTable(nil)
	tb.Set("ep/x", []Record{
		{Name: "x", Network: "n", IP: ip("10.9.0.2"), Sandbox: "x"},
		{Name: "github.com", Network: "n", IP: ip("10.9.0.2"), Sandbox: "x"},
		{Name: "-bad", Network: "n", IP: ip("10.9.0.2"), Sandbox: "x"},
		{Name: "ok-alias.", Network: "n", IP: ip("10.9.0.2"), Sandbox: "x"},
	})
	if tb.Len() != 2 {
		t.Fatalf("table has %d records, want 2 (x and ok-alias)", tb.Len())
	}
	if _, _, known := tb.lookup(nil, nil, "x", "github.com"); known {
		t.Fatal("github.com entered the table")
	}
	for name, ok := range map[string]bool{"web": true, "web.": true, "a_b-1": true, "github.com": false, "": false,
		"-x": false, "x-": false, strings.Repeat("a", 64): false, "ä": false, "a b": false} {
		if err := ValidLabel(name); (err == nil) != ok {
			t.Errorf("ValidLabel(%q) = %v, want ok=%v", name, err, ok)
		}
	}
}
