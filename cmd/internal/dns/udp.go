package dns

import (
	"encoding/binary"
	"errors"
	"net"
	"sync"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
)

// UDP batching: one recvmmsg reads up to udpBatch queries, local answers
// are made inline and sent back with one sendmmsg. Under load this replaces
// the miekg/dns server's goroutine and two system calls per packet, which
// dominate the cost of a local answer.
const (
	udpBatch   = 16
	udpMaxRead = advertisedUDPSize // a larger query is truncated and gets FORMERR
)

// udpServer serves one UDP socket of an attachment. Forwarded queries run
// in goroutines it owns and waits for.
type udpServer struct {
	a    *attachment
	conn *net.UDPConn
	pc   *ipv4.PacketConn
	wg   sync.WaitGroup // forwards in flight

	out     []ipv4.Message // replies of the current batch
	outBufs []*[]byte
}

func newUDPServer(a *attachment, conn *net.UDPConn) *udpServer {
	return &udpServer{a: a, conn: conn, pc: ipv4.NewPacketConn(conn)}
}

// run serves until the socket is closed.
func (u *udpServer) run() error {
	in := make([]ipv4.Message, udpBatch)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, udpMaxRead)}
	}
	u.out = make([]ipv4.Message, 0, udpBatch)
	for {
		n, err := u.pc.ReadBatch(in, 0)
		if err != nil {
			if u.a.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil // stopping
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		for i := range in[:n] {
			m := &in[i]
			addr, ok := m.Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			w := batchWriter{u: u, addr: addr}
			u.a.s.handlePacket(u.a, m.Buffers[0][:m.N], &w)
		}
		u.flush()
	}
}

// flush sends the replies of the batch; a reply that cannot be sent (the
// client's socket is gone) is dropped.
func (u *udpServer) flush() {
	pending := u.out
	for tries := 0; len(pending) > 0 && tries < udpBatch; tries++ {
		n, err := u.pc.WriteBatch(pending, 0)
		if err != nil && n <= 0 {
			n = 1 // skip the message that failed
		}
		pending = pending[n:]
	}
	for i, bp := range u.outBufs {
		packBufs.Put(bp)
		u.outBufs[i] = nil
	}
	u.outBufs = u.outBufs[:0]
	clear(u.out) // drop the client addresses
	u.out = u.out[:0]
}

// wait waits for the forwards started by this socket (after Close).
func (u *udpServer) wait() { u.wg.Wait() }

// batchWriter queues a reply in the batch; a forward detaches from the
// batch (goAsync) and writes its reply itself.
type batchWriter struct {
	u    *udpServer
	addr *net.UDPAddr
}

var _ asyncWriter = (*batchWriter)(nil)

func (w *batchWriter) Write(b []byte) (int, error) {
	u := w.u
	if len(u.out) == cap(u.out) {
		return 0, errors.New("udp reply batch full")
	}
	bp := packBufs.Get().(*[]byte)
	buf := append((*bp)[:0], b...)
	*bp = buf
	u.outBufs = append(u.outBufs, bp)
	u.out = append(u.out, ipv4.Message{Buffers: [][]byte{buf}, Addr: w.addr})
	return len(b), nil
}

func (w *batchWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

func (w *batchWriter) goAsync(fn func(dns.ResponseWriter)) {
	u := w.u
	d := &directWriter{conn: u.conn, addr: w.addr}
	u.wg.Go(func() { fn(d) })
}

func (w *batchWriter) LocalAddr() net.Addr  { return w.u.conn.LocalAddr() }
func (w *batchWriter) RemoteAddr() net.Addr { return w.addr }
func (w *batchWriter) Close() error         { return nil }
func (w *batchWriter) TsigStatus() error    { return nil }
func (w *batchWriter) TsigTimersOnly(bool)  {}
func (w *batchWriter) Hijack()              {}

// directWriter sends one reply with its own system call.
type directWriter struct {
	conn *net.UDPConn
	addr *net.UDPAddr
}

func (w *directWriter) Write(b []byte) (int, error) { return w.conn.WriteToUDP(b, w.addr) }
func (w *directWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
func (w *directWriter) LocalAddr() net.Addr  { return w.conn.LocalAddr() }
func (w *directWriter) RemoteAddr() net.Addr { return w.addr }
func (w *directWriter) Close() error         { return nil }
func (w *directWriter) TsigStatus() error    { return nil }
func (w *directWriter) TsigTimersOnly(bool)  {}
func (w *directWriter) Hijack()              {}

// asyncWriter is a ResponseWriter whose caller must not block (the UDP
// batch loop): a forward runs fn in a goroutine the writer's owner waits
// for, with a writer of its own.
type asyncWriter interface {
	goAsync(fn func(dns.ResponseWriter))
}

// handlePacket does for one UDP packet what the miekg/dns server does
// before calling a handler: header check, accept function, unpack, with
// the same replies to bad packets (none to a short one, FORMERR or NOTIMP
// otherwise).
func (s *Server) handlePacket(a *attachment, data []byte, w dns.ResponseWriter) {
	if len(data) < 12 {
		s.invalid(data, dns.ErrShortRead)
		return
	}
	h := dns.Header{
		Id:      binary.BigEndian.Uint16(data),
		Bits:    binary.BigEndian.Uint16(data[2:]),
		Qdcount: binary.BigEndian.Uint16(data[4:]),
		Ancount: binary.BigEndian.Uint16(data[6:]),
		Nscount: binary.BigEndian.Uint16(data[8:]),
		Arcount: binary.BigEndian.Uint16(data[10:]),
	}
	rcode := dns.RcodeFormatError
	switch s.accept(h) {
	case dns.MsgIgnore:
		return
	case dns.MsgRejectNotImplemented:
		rcode = dns.RcodeNotImplemented
	case dns.MsgAccept:
		m := new(dns.Msg)
		if err := m.Unpack(data); err == nil {
			a.ServeDNS(w, m)
			return
		} else {
			s.invalid(data, err)
		}
	}
	var hdr [12]byte
	binary.BigEndian.PutUint16(hdr[0:], h.Id)
	opcode := h.Bits & (0xF << 11)
	binary.BigEndian.PutUint16(hdr[2:], 1<<15|opcode|uint16(rcode))
	_, _ = w.Write(hdr[:])
}
