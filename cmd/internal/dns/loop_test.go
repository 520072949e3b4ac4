package dns

import (
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/miekg/dns"
)

// TestManySandboxesNoGoroutines attaches many sandboxes and checks that
// they cost no goroutine and no OS thread while idle (one event loop
// serves every socket), that each answers over UDP and TCP with its own
// scope, and that detaching them all leaves nothing behind.
func TestManySandboxesNoGoroutines(t *testing.T) {
	const n = 300
	s := newTestServer(t, Config{Upstreams: []string{closedPort(t)}})
	var recs []Record
	for i := range n {
		recs = append(recs, Record{Name: fmt.Sprintf("sb%d", i), Network: fmt.Sprintf("net%d", i%2), IP: netip.AddrFrom4([4]byte{10, byte(i % 2), byte(i >> 8), byte(i)}), Sandbox: fmt.Sprintf("sb%d", i)})
	}
	s.SetTable(NewTable(recs))
	before := numGoroutine()
	threadsBefore := threads(t)
	addrs := make([]string, n)
	for i := range n {
		addrs[i] = attach(t, s, fmt.Sprintf("sb%d", i))
	}
	if got := numGoroutine(); got > before+2 {
		t.Errorf("%d goroutines after attaching %d sandboxes, %d before: want no goroutine per sandbox", got, n, before)
	}
	for i, addr := range addrs {
		// sb(i) shares net(i%2) with sb(i+2), not with sb(i+1).
		peer := (i + 2) % n
		r := query(t, addr, "udp", fmt.Sprintf("sb%d.", peer), dns.TypeA)
		if got := answerAddrs(r); len(got) != 1 || got[0] != recs[peer].IP {
			t.Fatalf("sb%d asking for sb%d: %v, want %v", i, peer, got, recs[peer].IP)
		}
		if i%50 == 0 {
			r := query(t, addr, "tcp", fmt.Sprintf("sb%d.", (i+1)%n), dns.TypeA)
			if len(r.Answer) != 0 {
				t.Fatalf("sb%d got an answer for a sandbox of another network: %v", i, r.Answer)
			}
		}
	}
	if got := threads(t); got > threadsBefore+4 {
		t.Errorf("%d OS threads after serving %d sandboxes, %d before", got, n, threadsBefore)
	}
	for i := range n {
		s.Detach(fmt.Sprintf("sb%d", i))
	}
	netnstest.Eventually(t, 10*time.Second, "goroutines to end", func() bool { return numGoroutine() <= before })
	if st := s.Stats(); st.Attached != 0 {
		t.Errorf("%d attached after detaching all", st.Attached)
	}
	// The sockets are closed: the ports can be bound again.
	for _, addr := range addrs[:10] {
		pc, err := net.ListenPacket("udp4", addr)
		if err != nil {
			t.Errorf("udp %s still open after Detach: %v", addr, err)
			continue
		}
		pc.Close()
	}
}

// TestLoopFloodDoesNotStarve floods one sandbox's socket and checks that
// another sandbox served by the same loop still gets its answers quickly.
func TestLoopFloodDoesNotStarve(t *testing.T) {
	s := newTestServer(t, Config{Upstreams: []string{closedPort(t)}})
	flooded := attach(t, s, "web")
	quiet := attach(t, s, "ui")
	c, err := net.Dial("udp", flooded)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q, _ := new(dns.Msg).SetQuestion("db.", dns.TypeA).Pack()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		deadline := time.Now().Add(10 * time.Second)
		for i := 0; i < 200000 && time.Now().Before(deadline); i++ {
			select {
			case <-stop:
				return
			default:
			}
			_, _ = c.Write(q)
			if i%64 == 0 {
				_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
				var buf [512]byte
				for {
					if _, err := c.Read(buf[:]); err != nil {
						break
					}
				}
			}
		}
	}()
	defer func() { close(stop); <-done }()
	for range 20 {
		start := time.Now()
		r := query(t, quiet, "udp", "web.", dns.TypeA)
		if len(r.Answer) != 1 {
			t.Fatalf("ui asking for web: %v", r.Answer)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("answer took %v while another sandbox floods", took)
		}
	}
}

// threads counts the OS threads of the process.
func threads(t testing.TB) int {
	t.Helper()
	n, _ := runtime.ThreadCreateProfile(nil)
	return n
}
