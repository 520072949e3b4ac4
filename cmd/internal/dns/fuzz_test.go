package dns

import (
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// FuzzHandleQuery feeds arbitrary bytes through the path a UDP packet takes
// (handlePacket: header check, accept function, unpack, handler), with
// forwarding to a fake upstream on loopback, from a sandbox that may
// forward and from one that may not. Invariants: no panic; an accepted
// query gets exactly one reply, which parses, carries the query's ID and
// fits the client's UDP size; the sandbox that may not forward never
// reaches the upstream.
func FuzzHandleQuery(f *testing.F) {
	for _, m := range []*dns.Msg{
		new(dns.Msg).SetQuestion("web.", dns.TypeA),
		new(dns.Msg).SetQuestion("WEB.", dns.TypeAAAA),
		new(dns.Msg).SetQuestion("api.", dns.TypeANY),
		new(dns.Msg).SetQuestion("db.", dns.TypeA),
		new(dns.Msg).SetQuestion("2.0.1.10.in-addr.arpa.", dns.TypePTR),
		new(dns.Msg).SetQuestion("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.", dns.TypePTR),
		new(dns.Msg).SetQuestion("example.com.", dns.TypeA),
		new(dns.Msg).SetQuestion("example.com.", dns.TypeMX),
		new(dns.Msg).SetQuestion("web.", dns.TypeA).SetEdns0(4096, true),
		new(dns.Msg).SetQuestion("web.", dns.TypeTXT).SetEdns0(100, false),
	} {
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, false, false)
		f.Add(b, true, false)
		f.Add(b, false, true)
	}
	f.Add([]byte{}, false, false)
	f.Add([]byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1}, false, false)
	f.Add([]byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 3, 'w', 'e', 'b', 0, 0, 1, 0, 1, 0, 0, 41, 0xff}, true, true)

	up := startUpstream(f, "127.0.0.1", ip("192.0.2.7"))
	s := newTestServer(f, Config{Upstreams: []string{up.addr}, UpstreamTimeout: 500 * time.Millisecond})
	a := &attachment{s: s, sandbox: "web", ctx: context.Background()}
	// api1 may not forward (only on internal networks, as the agent says).
	s.SetForwarding("api1", false)
	internal := &attachment{s: s, sandbox: "api1", ctx: context.Background()}

	f.Fuzz(func(t *testing.T, data []byte, tcp, fromInternal bool) {
		w := &recordingWriter{tcp: tcp}
		asked := up.queries.Load()
		if fromInternal {
			s.handlePacket(internal, data, w)
			if up.queries.Load() != asked {
				t.Fatalf("a sandbox that may not forward reached the upstream with %x", data)
			}
		} else {
			s.handlePacket(a, data, w)
		}
		if len(data) < 12 || data[2]&0x80 != 0 { // short, or a response: no reply
			if len(w.replies) != 0 {
				t.Fatalf("%d replies to a short packet or a response, want none", len(w.replies))
			}
			return
		}
		if len(w.replies) != 1 {
			t.Fatalf("%d replies, want 1", len(w.replies))
		}
		reply := new(dns.Msg)
		if err := reply.Unpack(w.replies[0]); err != nil {
			t.Fatalf("reply does not parse: %v", err)
		}
		if id := binary.BigEndian.Uint16(data); reply.Id != id || !reply.Response {
			t.Fatalf("reply ID %d response %v, want ID %d and a response", reply.Id, reply.Response, id)
		}
		if !tcp {
			limit := dns.MinMsgSize
			q := new(dns.Msg)
			if q.Unpack(data) == nil {
				if o := q.IsEdns0(); o != nil {
					limit = max(limit, int(o.UDPSize()))
				}
			}
			if len(w.replies[0]) > limit {
				t.Fatalf("UDP reply of %d bytes, client accepts %d", len(w.replies[0]), limit)
			}
		}
	})
}

// recordingWriter is a dns.ResponseWriter that keeps what is written.
type recordingWriter struct {
	noTSIG
	tcp     bool
	replies [][]byte
}

func (w *recordingWriter) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 11), Port: 53}
}
func (w *recordingWriter) RemoteAddr() net.Addr {
	if w.tcp {
		return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
	}
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}
func (w *recordingWriter) WriteMsg(m *dns.Msg) error { return writeMsg(w, m) }
func (w *recordingWriter) Write(b []byte) (int, error) {
	w.replies = append(w.replies, append([]byte(nil), b...))
	return len(b), nil
}
func (w *recordingWriter) Close() error { return nil }
