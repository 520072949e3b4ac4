package dns

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// A resolver at one address that many sandboxes reach (Docker's embedded
// resolver forwards the names it does not know to such an address, from
// inside the container, so from the container's own address): each query
// is answered for the sandbox the source address belongs to, exactly as
// that sandbox's own resolver would; a source that is no sandbox's is
// refused.

// Querier names the sandbox that owns a source address.
type Querier func(src netip.Addr) (sandbox string, ok bool)

type sharedHandler struct {
	s       *Server
	ctx     context.Context
	querier Querier
}

func (h *sharedHandler) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	var src netip.Addr
	switch a := w.RemoteAddr().(type) {
	case *net.UDPAddr:
		src, _ = netip.AddrFromSlice(a.IP)
	case *net.TCPAddr:
		src, _ = netip.AddrFromSlice(a.IP)
	}
	sandbox, ok := h.querier(src.Unmap())
	if !ok {
		h.s.stats.refused.Add(1)
		h.s.replyRcode(w, r, r.IsEdns0(), isTCP(w), dns.RcodeRefused)
		return
	}
	h.s.serve(h.ctx, sandbox, w, r)
}

// ServeShared answers on pc (UDP) and ln (TCP) for the sandboxes querier
// names, until ctx ends; it closes both.
func (s *Server) ServeShared(ctx context.Context, pc net.PacketConn, ln net.Listener, querier Querier) error {
	h := &sharedHandler{s: s, ctx: ctx, querier: querier}
	udp := &dns.Server{PacketConn: pc, Handler: h, MsgAcceptFunc: s.accept, MsgInvalidFunc: s.invalid}
	tcp := &dns.Server{
		Listener: newBoundedListener(ln, maxTCPConns), Handler: h, ReadTimeout: 2 * time.Second,
		IdleTimeout:   func() time.Duration { return 8 * time.Second },
		MsgAcceptFunc: s.accept, MsgInvalidFunc: s.invalid,
	}
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	for _, srv := range []*dns.Server{udp, tcp} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- srv.ActivateAndServe()
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	_ = udp.Shutdown()
	_ = tcp.Shutdown()
	pc.Close()
	ln.Close()
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// boundedListener caps the shared resolver's TCP connections at max: one
// over the cap is closed at once (the client retries or gives up), so a
// flood of idle connections cannot grow the agent without bound.
type boundedListener struct {
	net.Listener
	slots chan struct{}
}

func newBoundedListener(ln net.Listener, max int) *boundedListener {
	return &boundedListener{Listener: ln, slots: make(chan struct{}, max)}
}

func (l *boundedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &boundedConn{Conn: c, release: func() { <-l.slots }}, nil
		default:
			c.Close()
		}
	}
}

// boundedConn gives its slot back once, when closed, and bounds each write
// so a client that stops reading cannot hold a handler.
type boundedConn struct {
	net.Conn
	release func()
	once    sync.Once
}

func (c *boundedConn) Write(b []byte) (int, error) {
	if err := c.Conn.SetWriteDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

func (c *boundedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}
