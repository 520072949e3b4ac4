package dnsload

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// serve answers A queries on a loopback UDP port; with silent it reads
// them and answers nothing.
func serve(t *testing.T, silent bool) string {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		if silent {
			return
		}
		m := new(dns.Msg).SetReply(r)
		rr, _ := dns.NewRR(r.Question[0].Name + " 30 IN A 192.0.2.1")
		m.Answer = append(m.Answer, rr)
		_ = w.WriteMsg(m)
	})
	srv := &dns.Server{PacketConn: pc, Handler: h}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

func TestRunMeasuresAnswers(t *testing.T) {
	addr := serve(t, false)
	qps, p50, p99, err := Run(context.Background(), addr, 8, 500*time.Millisecond, "web")
	if err != nil {
		t.Fatal(err)
	}
	if qps <= 0 || p50 <= 0 || p99 < p50 || p99 > 5*time.Second {
		t.Fatalf("qps %v p50 %v p99 %v: want answers counted with ordered latencies", qps, p50, p99)
	}
}

func TestRunReportsAServerThatDoesNotAnswer(t *testing.T) {
	addr := serve(t, true)
	_, _, _, err := Run(context.Background(), addr, 2, 1500*time.Millisecond, "web")
	if err == nil || !strings.Contains(err.Error(), "no answer") {
		t.Fatalf("err %v, want one saying there was no answer", err)
	}
}

func TestRunRejectsBadArguments(t *testing.T) {
	for _, c := range []struct {
		clients int
		dur     time.Duration
	}{{0, time.Second}, {1, 0}} {
		if _, _, _, err := Run(context.Background(), "127.0.0.1:53", c.clients, c.dur, "web"); err == nil {
			t.Errorf("%d clients for %v: no error", c.clients, c.dur)
		}
	}
}
