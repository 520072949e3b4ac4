package dns

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/miekg/dns"
)

func TestForwardUnknownNames(t *testing.T) {
	up := startUpstream(t, "127.0.0.1", ip("192.0.2.7"))
	s := newTestServer(t, Config{Upstreams: []string{up.addr}})
	ui := attach(t, s, "ui")
	for _, network := range []string{"udp", "tcp"} {
		for _, name := range []string{"example.com.", "single."} {
			r := query(t, ui, network, name, dns.TypeA)
			if r.Rcode != dns.RcodeSuccess || !slices.Equal(answerAddrs(r), []netip.Addr{ip("192.0.2.7")}) {
				t.Errorf("%s %s: %s %v, want the upstream's 192.0.2.7", network, name, dns.RcodeToString[r.Rcode], answerAddrs(r))
			}
		}
	}
	if r := query(t, ui, "udp", "nxdomain.example.", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("upstream NXDOMAIN relayed as %s", dns.RcodeToString[r.Rcode])
	}
	// A PTR for an address not in the table is the upstream's business.
	query(t, ui, "udp", "1.2.0.192.in-addr.arpa.", dns.TypePTR)
	if n := up.queries.Load(); n != 6 {
		t.Errorf("upstream saw %d queries, want 6", n)
	}
	st := s.Stats()
	if st.Forwarded != 6 || st.UpstreamCount != 6 || st.UpstreamSum <= 0 || st.UpstreamBuckets[len(st.UpstreamBuckets)-1].Count != 6 {
		t.Errorf("stats %+v", st)
	}
}

func TestForwardKeepsClientID(t *testing.T) {
	var seen []uint16
	var mu sync.Mutex
	up := startUpstreamWith(t, "127.0.0.1", "0", func(w dns.ResponseWriter, r *dns.Msg) {
		mu.Lock()
		seen = append(seen, r.Id)
		mu.Unlock()
		_ = w.WriteMsg(new(dns.Msg).SetReply(r))
	})
	s := newTestServer(t, Config{Upstreams: []string{up.addr}})
	ui := attach(t, s, "ui")
	for range 5 {
		r, err := exchange(ui, "udp", "example.com.", dns.TypeA, func(m *dns.Msg) { m.Id = 4242 })
		if err != nil || r.Id != 4242 {
			t.Fatalf("reply %v, %v; want ID 4242", r, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 5 || slices.Equal(seen, []uint16{4242, 4242, 4242, 4242, 4242}) {
		t.Errorf("upstream saw IDs %v, want fresh random IDs", seen)
	}
}

func TestForwardTruncatedRetriesTCP(t *testing.T) {
	up := startUpstreamWith(t, "127.0.0.1", "0", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg).SetReply(r)
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
			m.Truncated = true
			_ = w.WriteMsg(m)
			return
		}
		for i := range 50 {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: []byte{192, 0, 2, byte(i)}})
		}
		_ = w.WriteMsg(m)
	})
	s := newTestServer(t, Config{Upstreams: []string{up.addr}})
	ui := attach(t, s, "ui")
	r, err := exchange(ui, "udp", "big.example.", dns.TypeA, func(m *dns.Msg) { m.SetEdns0(4096, false) })
	if err != nil || r.Truncated || len(r.Answer) != 50 {
		t.Fatalf("EDNS 4096 client: %v, %v; want all 50 answers", r, err)
	}
	checkTruncatedOverUDP(t, ui, "big.example.", 50)
}

func TestForwardDeadUpstream(t *testing.T) {
	for _, tc := range []struct {
		name     string
		upstream func(testing.TB) string
	}{
		{"silent", blackhole},
		{"refusing", closedPort},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestServer(t, Config{Upstreams: []string{tc.upstream(t)}, UpstreamTimeout: 300 * time.Millisecond})
			ui := attach(t, s, "ui")
			checkQuickServFail(t, ui, "example.com.", "dead upstream")
			if st := s.Stats(); st.ForwardFailed != 1 {
				t.Errorf("forward failed %d, want 1", st.ForwardFailed)
			}
		})
	}
}

func TestForwardFailover(t *testing.T) {
	up := startUpstream(t, "127.0.0.1", ip("192.0.2.9"))
	s := newTestServer(t, Config{Upstreams: []string{blackhole(t), up.addr}, UpstreamTimeout: time.Second})
	ui := attach(t, s, "ui")
	for i := range 3 {
		start := time.Now()
		r := query(t, ui, "udp", "example.com.", dns.TypeA)
		if !slices.Equal(answerAddrs(r), []netip.Addr{ip("192.0.2.9")}) || time.Since(start) > 5*time.Second {
			t.Fatalf("query %d: %v after %v, want the live upstream's answer", i, answerAddrs(r), time.Since(start))
		}
	}
	if idx := s.ups.preferred.Load(); idx != 1 {
		t.Errorf("preferred upstream %d, want the live one (1)", idx)
	}
}

func TestForwardInflightBound(t *testing.T) {
	s := newTestServer(t, Config{Upstreams: []string{blackhole(t)}, UpstreamTimeout: 20 * time.Second, MaxInflight: 2})
	ui := attach(t, s, "ui")
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			c := dns.Client{Timeout: 30 * time.Second}
			_, _, _ = c.Exchange(new(dns.Msg).SetQuestion("slow.example.", dns.TypeA), ui)
		})
	}
	netnstest.Eventually(t, 5*time.Second, "two forwards in flight", func() bool { return s.Stats().Inflight == 2 })
	checkQuickServFail(t, ui, "third.example.", "third query")
	if st := s.Stats(); st.InflightRejected != 1 {
		t.Errorf("inflight rejected %d, want 1", st.InflightRejected)
	}
	// Detach aborts the blocked forwards instead of waiting 20 s.
	start := time.Now()
	s.Detach("ui")
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("blocked clients not released 10 s after Detach")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Detach with forwards in flight took %v", took)
	}
	if n := s.Stats().Inflight; n != 0 {
		t.Errorf("%d forwards still in flight after Detach", n)
	}
}

func TestResolvConfReload(t *testing.T) {
	a := startUpstream(t, "127.0.0.1", ip("192.0.2.1"))
	_, port, _ := net.SplitHostPort(a.addr)
	b := startUpstreamWith(t, "127.0.0.2", port, answerWith(ip("192.0.2.2")))

	path := filepath.Join(t.TempDir(), "resolv.conf")
	write := func(content string) {
		t.Helper()
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil { // as resolvconf does
			t.Fatal(err)
		}
	}
	write("# comment\nsearch example\nnameserver 127.0.0.1\noptions edns0\n")
	s := newTestServer(t, Config{resolvPath: path, resolvPort: port, resolvEvery: 10 * time.Millisecond})
	ui := attach(t, s, "ui")
	if got := s.Stats().Upstreams; !slices.Equal(got, []string{a.addr}) {
		t.Fatalf("upstreams %v, want [%s]", got, a.addr)
	}
	if r := query(t, ui, "udp", "example.com.", dns.TypeA); !slices.Equal(answerAddrs(r), []netip.Addr{ip("192.0.2.1")}) {
		t.Fatalf("answer %v, want upstream a's", answerAddrs(r))
	}
	write("nameserver 127.0.0.2\nnameserver not-an-ip\n")
	netnstest.Eventually(t, 5*time.Second, "the new resolv.conf to be used", func() bool {
		r := query(t, ui, "udp", "example.com.", dns.TypeA)
		return slices.Equal(answerAddrs(r), []netip.Addr{ip("192.0.2.2")})
	})
	// A missing file keeps the last good upstreams.
	os.Remove(path)
	time.Sleep(30 * time.Millisecond)
	if r := query(t, ui, "udp", "example.com.", dns.TypeA); !slices.Equal(answerAddrs(r), []netip.Addr{ip("192.0.2.2")}) {
		t.Errorf("after resolv.conf vanished: %v, want upstream b still", answerAddrs(r))
	}
	if b.queries.Load() < 2 {
		t.Errorf("upstream b saw %d queries, want at least 2", b.queries.Load())
	}
}

func TestResolvConfMissingAtStart(t *testing.T) {
	s := newTestServer(t, Config{resolvPath: filepath.Join(t.TempDir(), "none"), resolvEvery: 10 * time.Millisecond})
	ui := attach(t, s, "ui")
	if r := query(t, ui, "udp", "example.com.", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("no upstream: %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	if r := query(t, ui, "udp", "web.", dns.TypeA); len(r.Answer) != 1 {
		t.Errorf("local names must work without upstreams: %v", r)
	}
}

func TestParseNameservers(t *testing.T) {
	got := parseNameservers([]byte("nameserver 10.0.0.1\n  nameserver   ::1 # x\n#nameserver 10.0.0.9\nnameserver\nnameserver fe80::1%eth0\nnameservers 1.1.1.1\n"), "53")
	want := []string{"10.0.0.1:53", "[::1]:53", "[fe80::1%eth0]:53"}
	if !slices.Equal(got, want) {
		t.Errorf("parseNameservers = %v, want %v", got, want)
	}
}
