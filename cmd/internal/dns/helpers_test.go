package dns

import (
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// newTestServer returns a server with the twoNetworks table, closed when
// the test ends.
func newTestServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	s.SetTable(NewTable(twoNetworks()))
	return s
}

// attach serves sandbox on a loopback port and returns the address.
func attach(t testing.TB, s *Server, sandbox string) string {
	t.Helper()
	addr, err := s.attachAddr(sandbox, "127.0.0.1:0")
	if err != nil {
		t.Fatalf("attachAddr %s: %v", sandbox, err)
	}
	return addr
}

// fakeUpstream is a miekg/dns server on loopback (UDP and TCP, one port)
// that counts the queries and answers every A question with its address
// (NXDOMAIN for nxdomain.example), or as handle says.
type fakeUpstream struct {
	addr    string
	queries atomic.Int64
}

func startUpstream(t testing.TB, host string, answer netip.Addr) *fakeUpstream {
	t.Helper()
	return startUpstreamWith(t, host, "0", answerWith(answer))
}

// answerWith is the default fake upstream: answer for A questions.
func answerWith(answer netip.Addr) dns.HandlerFunc {
	return func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.RecursionAvailable = true
		q := r.Question[0]
		switch {
		case q.Name == "nxdomain.example.":
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30}, A: answer.AsSlice()})
		}
		_ = w.WriteMsg(m)
	}
}

// startUpstreamWith serves handle on host:port (port "0": any free port,
// the same for UDP and TCP; a taken fixed port skips the test).
func startUpstreamWith(t testing.TB, host, port string, handle dns.HandlerFunc) *fakeUpstream {
	t.Helper()
	u := &fakeUpstream{}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		u.queries.Add(1)
		handle(w, r)
	})
	pc, ln, err := listenPair(net.JoinHostPort(host, port))
	if err != nil && port != "0" {
		t.Skipf("port %s taken on %s: %v", port, host, err)
	}
	if err != nil {
		t.Fatalf("fake upstream: %v", err)
	}
	u.addr = pc.LocalAddr().String()
	serve(t, &dns.Server{PacketConn: pc, Handler: h})
	serve(t, &dns.Server{Listener: ln, Handler: h})
	return u
}

// serve runs srv until the test ends.
func serve(t testing.TB, srv *dns.Server) {
	t.Helper()
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.ActivateAndServe()
	}()
	<-started
	t.Cleanup(func() {
		_ = srv.Shutdown()
		<-done
	})
}

// blackhole is a UDP socket that reads and never answers.
func blackhole(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().String()
}

// closedPort returns a loopback UDP address nobody listens on.
func closedPort(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

func query(t testing.TB, addr, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	r, err := exchange(addr, network, name, qtype, nil)
	if err != nil {
		t.Fatalf("query %s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	return r
}

func exchange(addr, network, name string, qtype uint16, edit func(*dns.Msg)) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if edit != nil {
		edit(m)
	}
	c := dns.Client{Net: network, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, addr)
	return r, err
}

// answerAddrs returns the A/AAAA addresses of a reply.
func answerAddrs(r *dns.Msg) []netip.Addr {
	var out []netip.Addr
	for _, rr := range r.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			a, _ := netip.AddrFromSlice(rr.A)
			out = append(out, a.Unmap())
		case *dns.AAAA:
			a, _ := netip.AddrFromSlice(rr.AAAA)
			out = append(out, a)
		}
	}
	return out
}

// numGoroutine counts goroutines, letting finished ones exit first.
func numGoroutine() int {
	runtime.Gosched()
	return runtime.NumGoroutine()
}

// listenPair opens (for the fake upstreams) a UDP and a TCP socket on the same address; addr with
// port 0 gets the UDP socket's port for TCP too.
func listenPair(addr string) (pc net.PacketConn, ln net.Listener, err error) {
	// Port 0: the kernel picks a free UDP port, but the TCP port of that
	// number may be taken (other tests run on this machine); try others.
	for range 20 {
		if pc, ln, err = listenPairOnce(addr); err == nil || !strings.HasSuffix(addr, ":0") {
			break
		}
	}
	return pc, ln, err
}

func listenPairOnce(addr string) (net.PacketConn, net.Listener, error) {
	pc, err := net.ListenPacket("udp4", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen udp %s: %w", addr, err)
	}
	ln, err := net.Listen("tcp4", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		return nil, nil, fmt.Errorf("listen tcp %s: %w", pc.LocalAddr(), err)
	}
	return pc, ln, nil
}

// checkTruncatedOverUDP: name has n A records; a client of plain 512-byte
// UDP at addr gets them truncated (TC, fewer records), a TCP client all n.
func checkTruncatedOverUDP(t testing.TB, addr, name string, n int) {
	t.Helper()
	r := query(t, addr, "udp", name, dns.TypeA)
	if !r.Truncated || len(r.Answer) >= n {
		t.Errorf("%s over UDP, 512 bytes: truncated %v with %d answers, want TC and fewer than %d", name, r.Truncated, len(r.Answer), n)
	}
	r = query(t, addr, "tcp", name, dns.TypeA)
	if r.Truncated || len(r.Answer) != n {
		t.Errorf("%s over TCP: truncated %v with %d answers, want all %d", name, r.Truncated, len(r.Answer), n)
	}
}

// checkQuickServFail: a UDP query for name at addr gets SERVFAIL well
// within 5 s (the client's own timeout), not after the upstream's.
func checkQuickServFail(t testing.TB, addr, name, what string) {
	t.Helper()
	start := time.Now()
	r := query(t, addr, "udp", name, dns.TypeA)
	if took := time.Since(start); r.Rcode != dns.RcodeServerFailure || took > 5*time.Second {
		t.Errorf("%s: %s after %v, want SERVFAIL well within 5 s", what, dns.RcodeToString[r.Rcode], took)
	}
}
