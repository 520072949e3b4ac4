package dns

import (
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/miekg/dns"
)

func TestServerLocalAnswers(t *testing.T) {
	up := startUpstream(t, "127.0.0.1", ip("192.0.2.1"))
	s := newTestServer(t, Config{Upstreams: []string{up.addr}, TTL: 42 * time.Second})
	ui := attach(t, s, "ui")
	db := attach(t, s, "db")

	for _, network := range []string{"udp", "tcp"} {
		r := query(t, ui, network, "web.", dns.TypeA)
		if r.Rcode != dns.RcodeSuccess || !slices.Equal(answerAddrs(r), []netip.Addr{ip("10.1.0.2")}) {
			t.Errorf("%s: ui asks web: %v %v, want 10.1.0.2", network, dns.RcodeToString[r.Rcode], answerAddrs(r))
		}
		if len(r.Answer) == 1 && r.Answer[0].Header().Ttl != 42 {
			t.Errorf("%s: TTL %d, want 42", network, r.Answer[0].Header().Ttl)
		}
	}
	if r := query(t, db, "udp", "WEB.", dns.TypeA); !slices.Equal(answerAddrs(r), []netip.Addr{ip("10.2.0.2")}) {
		t.Errorf("db asks WEB: %v, want the back-network address 10.2.0.2", answerAddrs(r))
	} else if r.Answer[0].Header().Name != "WEB." {
		t.Errorf("answer name %q, want the question's spelling WEB.", r.Answer[0].Header().Name)
	}
	if r := query(t, ui, "udp", "web.", dns.TypeAAAA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Errorf("AAAA for local name: %s with %d answers, want NOERROR and none", dns.RcodeToString[r.Rcode], len(r.Answer))
	}
	if r := query(t, db, "udp", "4.0.2.10.in-addr.arpa.", dns.TypePTR); len(r.Answer) != 2 ||
		r.Answer[0].(*dns.PTR).Ptr != "db." || r.Answer[1].(*dns.PTR).Ptr != "database." {
		t.Errorf("PTR 10.2.0.4 from db: %v, want db. and database.", r.Answer)
	}
	if n := up.queries.Load(); n != 0 {
		t.Errorf("upstream got %d queries for local names, want 0", n)
	}
	st := s.Stats()
	if st.Local != 5 || st.Attached != 2 || st.Records != len(twoNetworks()) {
		t.Errorf("stats %+v, want 5 local, 2 attached, %d records", st, len(twoNetworks()))
	}
}

// TestServerOutOfScopeIsForwarded: a name (or address) that exists only on
// networks the querier is not on gets the upstream's answer, exactly as an
// unknown name: no NXDOMAIN reveals it, and a name there cannot shadow an
// outside name for the querier.
func TestServerOutOfScopeIsForwarded(t *testing.T) {
	up := startUpstream(t, "127.0.0.1", ip("192.0.2.1"))
	s := newTestServer(t, Config{Upstreams: []string{up.addr}})
	ui := attach(t, s, "ui")
	for _, tc := range []struct {
		name  string
		qtype uint16
	}{{"db.", dns.TypeA}, {"database.", dns.TypeAAAA}, {"4.0.2.10.in-addr.arpa.", dns.TypePTR}} {
		before := up.queries.Load()
		r := query(t, ui, "udp", tc.name, tc.qtype)
		if r.Rcode == dns.RcodeNameError || up.queries.Load() != before+1 {
			t.Errorf("ui asks %s %s (no shared network): %s, upstream asked %d times; want it forwarded once",
				dns.TypeToString[tc.qtype], tc.name, dns.RcodeToString[r.Rcode], up.queries.Load()-before)
		}
		if tc.qtype == dns.TypeA && !slices.Equal(answerAddrs(r), []netip.Addr{ip("192.0.2.1")}) {
			t.Errorf("ui asks db: %v, want the upstream's 192.0.2.1", answerAddrs(r))
		}
	}
	if st := s.Stats(); st.Forwarded != 3 || st.Local != 0 {
		t.Errorf("stats %+v, want 3 forwarded, 0 local", st)
	}
}

func TestServerRoundRobin(t *testing.T) {
	s := newTestServer(t, Config{Upstreams: []string{closedPort(t)}})
	db := attach(t, s, "db")
	firsts := map[netip.Addr]int{}
	for range 10 {
		r := query(t, db, "udp", "api.", dns.TypeA)
		if len(r.Answer) != 2 {
			t.Fatalf("api: %d answers, want 2", len(r.Answer))
		}
		firsts[answerAddrs(r)[0]]++
	}
	if len(firsts) != 2 {
		t.Errorf("first answer over 10 queries: %v, want both addresses", firsts)
	}
}

func TestServerEDNS(t *testing.T) {
	s := newTestServer(t, Config{Upstreams: []string{closedPort(t)}})
	ui := attach(t, s, "ui")
	r, err := exchange(ui, "udp", "web.", dns.TypeA, func(m *dns.Msg) {
		m.SetEdns0(4096, true)
		o := m.IsEdns0()
		o.Option = append(o.Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
	})
	if err != nil {
		t.Fatal(err)
	}
	o := r.IsEdns0()
	if o == nil || !o.Do() || o.UDPSize() != advertisedUDPSize || len(o.Option) != 0 || len(r.Answer) != 1 {
		t.Errorf("EDNS reply: %v", r)
	}
	r, err = exchange(ui, "udp", "web.", dns.TypeA, func(m *dns.Msg) {
		m.SetEdns0(4096, false)
		m.IsEdns0().SetVersion(1)
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.Rcode != dns.RcodeBadVers {
		t.Errorf("EDNS version 1: %s, want BADVERS", dns.RcodeToString[r.Rcode])
	}
}

func TestServerRefused(t *testing.T) {
	s := newTestServer(t, Config{Upstreams: []string{closedPort(t)}})
	ui := attach(t, s, "ui")
	r, err := exchange(ui, "udp", "web.", dns.TypeA, func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS })
	if err != nil || r.Rcode != dns.RcodeRefused {
		t.Errorf("CHAOS class: %v %v, want REFUSED", r, err)
	}
	r, err = exchange(ui, "udp", "web.", dns.TypeA, func(m *dns.Msg) { m.Opcode = dns.OpcodeUpdate })
	if err != nil || r.Rcode != dns.RcodeNotImplemented {
		t.Errorf("UPDATE: %v %v, want NOTIMP", r, err)
	}
	r, err = exchange(ui, "udp", "web.", dns.TypeA, func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify })
	if err != nil || r.Rcode != dns.RcodeNotImplemented {
		t.Errorf("NOTIFY: %v %v, want NOTIMP", r, err)
	}
	if st := s.Stats(); st.Refused != 3 {
		t.Errorf("refused %d, want 3", st.Refused)
	}
}

func TestServerLargeAnswerTruncated(t *testing.T) {
	s := newTestServer(t, Config{Upstreams: []string{closedPort(t)}})
	var recs []Record
	for i := range 60 {
		a := netip.AddrFrom4([4]byte{10, 9, 0, byte(i + 2)})
		recs = append(recs, Record{Name: "many", Network: "n", IP: a, Sandbox: "m" + a.String()})
	}
	recs = append(recs, Record{Name: "q", Network: "n", IP: ip("10.9.1.1"), Sandbox: "q"})
	s.SetTable(NewTable(recs))
	q := attach(t, s, "q")
	checkTruncatedOverUDP(t, q, "many.", 60)
}

func TestServerSetTable(t *testing.T) {
	up := startUpstream(t, "127.0.0.1", ip("192.0.2.1"))
	s := newTestServer(t, Config{Upstreams: []string{up.addr}})
	ui := attach(t, s, "ui")
	if r := query(t, ui, "udp", "web.", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("web before removal: %v", r)
	}
	s.SetTable(NewTable(twoNetworks()[2:])) // web removed
	r := query(t, ui, "udp", "web.", dns.TypeA)
	if got := answerAddrs(r); slices.Contains(got, ip("10.1.0.2")) {
		t.Errorf("web after removal still resolves locally: %v", got)
	}
	if up.queries.Load() != 1 {
		t.Errorf("removed name should be forwarded like any unknown name; upstream saw %d queries", up.queries.Load())
	}
	s.SetTable(nil)
	if st := s.Stats(); st.Records != 0 {
		t.Errorf("records after SetTable(nil): %d", st.Records)
	}
}

func TestDetachStopsAnswering(t *testing.T) {
	s := newTestServer(t, Config{Upstreams: []string{closedPort(t)}})
	ui := attach(t, s, "ui")
	query(t, ui, "udp", "web.", dns.TypeA)
	s.Detach("ui")
	s.Detach("ui") // twice is fine
	c := dns.Client{Timeout: 300 * time.Millisecond}
	m := new(dns.Msg).SetQuestion("web.", dns.TypeA)
	if _, _, err := c.Exchange(m, ui); err == nil {
		t.Error("query after Detach was answered")
	}
	if s.Stats().Attached != 0 {
		t.Errorf("attached %d after Detach", s.Stats().Attached)
	}
	ui2 := attach(t, s, "ui")
	query(t, ui2, "udp", "web.", dns.TypeA)
	s.Close()
	if _, err := s.attachAddr("ui", "127.0.0.1:0"); err != ErrClosed {
		t.Errorf("attach after Close: %v, want ErrClosed", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{Upstreams: []string{"1.1.1.1"}},
		{Upstreams: []string{"dns.example:53"}},
		{MaxInflight: -1, Upstreams: []string{"1.1.1.1:53"}},
		{TTL: -time.Second, Upstreams: []string{"1.1.1.1:53"}},
	} {
		if s, err := New(cfg); err == nil {
			s.Close()
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

// TestMalformedNoLeak sends garbage over UDP and TCP, then checks the
// server still answers, counted it, and leaves no goroutine or socket
// behind after Detach.
func TestMalformedNoLeak(t *testing.T) {
	s := newTestServer(t, Config{Upstreams: []string{closedPort(t)}, Log: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	before := numGoroutine()
	addr := attach(t, s, "ui")

	valid, _ := new(dns.Msg).SetQuestion("web.", dns.TypeA).Pack()
	twoQ := new(dns.Msg).SetQuestion("web.", dns.TypeA)
	twoQ.Question = append(twoQ.Question, twoQ.Question[0])
	twoQPacked, _ := twoQ.Pack()
	resp := new(dns.Msg).SetQuestion("web.", dns.TypeA)
	resp.Response = true
	respPacked, _ := resp.Pack()
	garbage := [][]byte{
		{}, {0}, make([]byte, 11), make([]byte, 12),
		valid[:len(valid)-3], append(append([]byte{}, valid...), 0xff, 0xff),
		twoQPacked, respPacked,
		{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1},                          // compression loop
		{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 3, 'w', 'e', 'b', 0, 0, 1, 0, 1, 0, 0, 41, 0xff}, // broken OPT
	}
	u, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		for _, g := range garbage {
			_, _ = u.Write(g)
		}
	}
	u.Close()
	for _, g := range garbage {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write(append([]byte{byte(len(g) >> 8), byte(len(g))}, g...))
		_ = c.Close()
	}
	half, err := net.Dial("tcp", addr) // a length prefix and nothing more, left open
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	_, _ = half.Write([]byte{0, 40, 1})

	query(t, addr, "udp", "web.", dns.TypeA)
	query(t, addr, "tcp", "web.", dns.TypeA)
	netnstest.Eventually(t, 5*time.Second, "malformed packets counted", func() bool { return s.Stats().Malformed >= 20*6 })

	s.Detach("ui")
	netnstest.Eventually(t, 5*time.Second, "goroutines to end", func() bool { return numGoroutine() <= before })
	for _, network := range []string{"udp", "tcp"} {
		var err error
		if network == "udp" {
			var pc net.PacketConn
			if pc, err = net.ListenPacket("udp", addr); err == nil {
				pc.Close()
			}
		} else {
			var ln net.Listener
			if ln, err = net.Listen("tcp", addr); err == nil {
				ln.Close()
			}
		}
		if err != nil {
			t.Errorf("%s socket %s still open after Detach: %v", network, addr, err)
		}
	}
}

func TestTCPConnectionCap(t *testing.T) {
	s := newTestServer(t, Config{Upstreams: []string{closedPort(t)}})
	addr := attach(t, s, "ui")
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range maxTCPConns + 5 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// Idle connections beyond the cap are closed by the server.
	netnstest.Eventually(t, 5*time.Second, "connections over the cap to be closed", func() bool {
		closed := 0
		for _, c := range conns[maxTCPConns-5:] {
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
			if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
				closed++
			}
		}
		return closed >= 5
	})
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	netnstest.Eventually(t, 5*time.Second, "a TCP query after the idle connections closed", func() bool {
		_, err := exchange(addr, "tcp", "web.", dns.TypeA, nil)
		return err == nil
	})
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
