package dns

import (
	"encoding/binary"
	"errors"
	"net"
	"unsafe"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// UDP batching: one recvmmsg reads up to udpBatch queries of one socket,
// local answers are made inline and sent back with one sendmmsg, because
// system calls, not DNS, are the cost of a local answer. The buffers
// belong to the loop, not to a sandbox.
const (
	udpBatch   = 16
	udpMaxRead = advertisedUDPSize // a larger query is truncated and gets FORMERR
)

// udpBatchBufs is the loop's receive and reply state for one batch.
type udpBatchBufs struct {
	in     [udpBatch]unix.Mmsghdr
	inIov  [udpBatch]unix.Iovec
	inBuf  [udpBatch][udpMaxRead]byte
	inAddr [udpBatch]unix.RawSockaddrInet4

	out     [udpBatch]unix.Mmsghdr
	outIov  [udpBatch]unix.Iovec
	outAddr [udpBatch]unix.RawSockaddrInet4
	outBufs [udpBatch]*[]byte
	nout    int
}

func (b *udpBatchBufs) init() {
	for i := range b.in {
		b.in[i].Hdr.Iov = &b.inIov[i]
		b.in[i].Hdr.SetIovlen(1)
		b.in[i].Hdr.Name = (*byte)(unsafe.Pointer(&b.inAddr[i]))
		b.inIov[i].Base = &b.inBuf[i][0]
		b.out[i].Hdr.Iov = &b.outIov[i]
		b.out[i].Hdr.SetIovlen(1)
		b.out[i].Hdr.Name = (*byte)(unsafe.Pointer(&b.outAddr[i]))
		b.out[i].Hdr.Namelen = unix.SizeofSockaddrInet4
	}
}

// udpRounds bounds the batches one socket is served per round of the
// loop: enough to drain a busy socket without going back to epoll for
// every batch, few enough that a flood cannot hold the loop.
const udpRounds = 4

// serveUDP reads batches from a's UDP socket and answers them, until the
// socket is empty or it had udpRounds batches. An error means the socket is
// broken.
func (l *loop) serveUDP(a *attachment) error {
	for range udpRounds {
		n, err := l.serveUDPBatch(a)
		if err != nil || n < udpBatch {
			return err
		}
	}
	return nil
}

// serveUDPBatch reads one batch (recvmmsg) and answers it; n is the
// number of packets read.
func (l *loop) serveUDPBatch(a *attachment) (n int, err error) {
	b := &l.batch
	for i := range b.in {
		b.in[i].Hdr.Namelen = unix.SizeofSockaddrInet4
		b.in[i].Hdr.Flags = 0
		b.inIov[i].SetLen(udpMaxRead)
	}
	n, err = mmsg(unix.SYS_RECVMMSG, a.udpFD, b.in[:], unix.MSG_DONTWAIT)
	switch {
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNREFUSED), errors.Is(err, unix.ENOMEM):
		return 0, nil
	case err != nil:
		return 0, err
	}
	for i := range n {
		if b.inAddr[i].Family != unix.AF_INET {
			continue
		}
		w := batchWriter{l: l, a: a, addr: b.inAddr[i]}
		l.s.handlePacket(a, b.inBuf[i][:b.in[i].Len], &w)
	}
	l.flush(a.udpFD)
	return n, nil
}

// flush sends the replies of the batch; a reply that cannot be sent (the
// client's socket is gone) is dropped.
func (l *loop) flush(fd int) {
	b := &l.batch
	pending := b.out[:b.nout]
	for tries := 0; len(pending) > 0 && tries < udpBatch; tries++ {
		n, err := mmsg(unix.SYS_SENDMMSG, fd, pending, unix.MSG_DONTWAIT)
		if err != nil || n <= 0 {
			n = 1 // skip the message that failed
		}
		pending = pending[n:]
	}
	for i := range b.nout {
		packBufs.Put(b.outBufs[i])
		b.outBufs[i] = nil
		b.outIov[i] = unix.Iovec{}
	}
	clear(b.outAddr[:b.nout]) // drop the client addresses
	b.nout = 0
}

// mmsg is recvmmsg or sendmmsg on msgs.
func mmsg(trap uintptr, fd int, msgs []unix.Mmsghdr, flags int) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	n, _, errno := unix.Syscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), uintptr(flags), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

func udpAddr(sa *unix.RawSockaddrInet4) *net.UDPAddr {
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	return &net.UDPAddr{IP: net.IPv4(sa.Addr[0], sa.Addr[1], sa.Addr[2], sa.Addr[3]), Port: int(port)}
}

// batchWriter queues a reply in the loop's batch; a forward detaches from
// the batch (goAsync) and writes its reply itself.
type batchWriter struct {
	noTSIG
	l    *loop
	a    *attachment
	addr unix.RawSockaddrInet4
}

var _ asyncWriter = (*batchWriter)(nil)

func (w *batchWriter) Write(b []byte) (int, error) {
	bb := &w.l.batch
	if bb.nout == udpBatch {
		return 0, errors.New("udp reply batch full")
	}
	bp := packBufs.Get().(*[]byte)
	buf := append((*bp)[:0], b...)
	*bp = buf
	i := bb.nout
	bb.outBufs[i] = bp
	bb.outIov[i].Base = unsafe.SliceData(buf)
	bb.outIov[i].SetLen(len(buf))
	bb.outAddr[i] = w.addr
	bb.nout++
	return len(b), nil
}

func (w *batchWriter) WriteMsg(m *dns.Msg) error { return writeMsg(w, m) }

func (w *batchWriter) goAsync(fn func(dns.ResponseWriter)) {
	d := &directWriter{fd: w.a.udpFD, addr: w.addr}
	w.a.wg.Go(func() { fn(d) })
}

func (w *batchWriter) viaTCP() bool         { return false }
func (w *batchWriter) LocalAddr() net.Addr  { return w.a.localAddr() }
func (w *batchWriter) RemoteAddr() net.Addr { return udpAddr(&w.addr) }
func (w *batchWriter) Close() error         { return nil }

// directWriter sends one reply with its own system call. The socket stays
// open until every forward of the attachment has ended.
type directWriter struct {
	noTSIG
	fd   int
	addr unix.RawSockaddrInet4
}

func (w *directWriter) Write(b []byte) (int, error) {
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&w.addr.Port))[:])
	if err := unix.Sendto(w.fd, b, unix.MSG_DONTWAIT, &unix.SockaddrInet4{Port: int(port), Addr: w.addr.Addr}); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (w *directWriter) WriteMsg(m *dns.Msg) error { return writeMsg(w, m) }
func (w *directWriter) viaTCP() bool              { return false }
func (w *directWriter) LocalAddr() net.Addr       { return nil }
func (w *directWriter) RemoteAddr() net.Addr      { return udpAddr(&w.addr) }
func (w *directWriter) Close() error              { return nil }

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
