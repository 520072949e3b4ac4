package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// Sentinel errors of Attach.
var (
	// ErrClosed: the server was closed.
	ErrClosed = errors.New("dns server closed")
	// ErrLoopbackDown: lo is down in the sandbox's namespace. The kernel
	// would let the sockets bind, but replies would leave from the wrong
	// source address and every client would drop them.
	ErrLoopbackDown = errors.New("loopback interface is down")
)

// Config configures a Server. The zero value is usable.
type Config struct {
	// Upstreams are the resolvers (host:port) that names without a local
	// record are forwarded to. Empty: the nameservers of /etc/resolv.conf,
	// re-read when the file changes.
	Upstreams []string
	// TTL of local answers; default 60 s, short so removed names go fast.
	TTL time.Duration
	// UpstreamTimeout bounds one forwarded query over all upstreams and
	// retries; default 2 s.
	UpstreamTimeout time.Duration
	// MaxInflight bounds the forwarded queries waiting for an upstream;
	// beyond it a query gets SERVFAIL at once. Default 256. One sandbox
	// gets at most a fair share of it (see shares).
	MaxInflight int
	// Log receives state changes and failures; default: discard.
	Log *slog.Logger

	// Test hooks: where resolv.conf is, how often it is checked and the
	// port its nameservers listen on.
	resolvPath  string
	resolvEvery time.Duration
	resolvPort  string
}

// Server is the embedded DNS server of one agent: one pair of sockets per
// attached sandbox, all served by one event loop; one table, one set of
// upstreams.
type Server struct {
	cfg      Config
	log      *slog.Logger
	ttl      uint32
	table    atomic.Pointer[Table]
	ups      *upstreams
	inflight chan struct{}
	shares   shares   // per-sandbox part of inflight
	denied   sync.Map // sandbox → struct{}: no upstream forwarding (SetForwarding)
	stats    counters
	ctx      context.Context // cancelled by Close: aborts forwards
	cancel   context.CancelFunc
	loop     *loop

	mu       sync.Mutex
	closed   bool
	attached map[string]*attachment
}

// New returns a server with an empty table and no sandbox attached.
func New(cfg Config) (*Server, error) {
	if cfg.TTL == 0 {
		cfg.TTL = 60 * time.Second
	}
	if cfg.UpstreamTimeout == 0 {
		cfg.UpstreamTimeout = 2 * time.Second
	}
	if cfg.MaxInflight == 0 {
		cfg.MaxInflight = 256
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.TTL < 0 || cfg.TTL > 24*time.Hour || cfg.UpstreamTimeout < 0 || cfg.MaxInflight < 0 {
		return nil, fmt.Errorf("invalid dns config: ttl %v, upstream timeout %v, max inflight %d", cfg.TTL, cfg.UpstreamTimeout, cfg.MaxInflight)
	}
	ups, err := newUpstreams(cfg)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Log,
		ttl:      uint32(cfg.TTL / time.Second),
		ups:      ups,
		inflight: make(chan struct{}, cfg.MaxInflight),
		attached: make(map[string]*attachment),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.table.Store(NewTable(nil))
	if s.loop, err = newLoop(s); err != nil {
		s.cancel()
		return nil, err
	}
	return s, nil
}

// SetTable makes t the table every query is answered from; nil empties it.
func (s *Server) SetTable(t *Table) {
	if t == nil {
		t = NewTable(nil)
	}
	s.table.Store(t)
}

// SetRecords replaces the records of one owner in the table queries are
// answered from (see Table.Set); none removes them.
func (s *Server) SetRecords(owner string, records []Record) {
	s.table.Load().Set(owner, records)
}

// attachment is one sandbox's pair of sockets, served by the loop.
type attachment struct {
	s       *Server
	sandbox string
	id      netns.ID
	addr    netip.AddrPort
	udpFD   int
	tcpFD   int
	token   uint32          // the loop's name for it
	ctx     context.Context // cancelled by Detach: aborts this sandbox's forwards
	cancel  context.CancelFunc
	wg      sync.WaitGroup // forwards and TCP connections
	dead    chan struct{}  // closed when the loop gave up on a socket
	once    sync.Once

	connMu sync.Mutex
	conns  map[net.Conn]struct{}
}

var _ dns.Handler = (*attachment)(nil)

// ServeDNS answers on behalf of the sandbox the socket belongs to.
func (a *attachment) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	a.s.serve(a.ctx, a.sandbox, w, r)
}

func (a *attachment) alive() bool {
	select {
	case <-a.dead:
		return false
	default:
		return true
	}
}

func (a *attachment) localAddr() net.Addr { return net.UDPAddrFromAddrPort(a.addr) }

// Attach starts the resolver of sandbox on 127.0.0.11:53 inside the
// network namespace at nsPath. Attaching a sandbox that is already served
// in the same namespace does nothing; if the namespace was recreated (or the
// resolver died) the old sockets are closed and new ones opened.
func (s *Server) Attach(sandbox, nsPath string) error {
	id, err := netns.IDOf(nsPath)
	if err != nil {
		return fmt.Errorf("attach dns to %s: %w", sandbox, err)
	}
	err = s.attach(sandbox, id, func() (udpFD, tcpFD int, bound netip.AddrPort, err error) {
		err = netns.Do(nsPath, func() error {
			// net.InterfaceByName asks the kernel on this thread, so
			// about this namespace.
			lo, err := net.InterfaceByName("lo")
			if err != nil {
				return fmt.Errorf("find lo: %w", err)
			}
			if lo.Flags&net.FlagUp == 0 {
				return ErrLoopbackDown
			}
			udpFD, tcpFD, bound, err = listenFDs(netip.AddrPortFrom(netip.MustParseAddr(Address), 53))
			return err
		})
		return udpFD, tcpFD, bound, err
	})
	if err != nil {
		return fmt.Errorf("attach dns to %s (%s): %w", sandbox, nsPath, err)
	}
	return nil
}

// attachAddr serves sandbox on addr in the current namespace (tests: port 0
// picks a free port, the same for UDP and TCP). It returns the address.
func (s *Server) attachAddr(sandbox, addr string) (string, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return "", fmt.Errorf("attach dns to %s: %w", sandbox, err)
	}
	var bound netip.AddrPort
	err = s.attach(sandbox, netns.ID{}, func() (int, int, netip.AddrPort, error) {
		for range 20 { // a free UDP port may be taken for TCP: try a few
			u, t, b, err := listenFDs(ap)
			if err == nil || ap.Port() != 0 {
				bound = b
				return u, t, b, err
			}
		}
		return -1, -1, bound, fmt.Errorf("no free port pair on %s", addr)
	})
	return bound.String(), err
}

func (s *Server) attach(sandbox string, id netns.ID, listen func() (int, int, netip.AddrPort, error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if old := s.attached[sandbox]; old != nil {
		if old.id == id && id != (netns.ID{}) && old.alive() {
			return nil
		}
		s.log.Info("dns: re-attaching sandbox", "sandbox", sandbox, "alive", old.alive())
		old.stop()
		delete(s.attached, sandbox)
	}
	udpFD, tcpFD, bound, err := listen()
	if err != nil {
		return err
	}
	a := &attachment{s: s, sandbox: sandbox, id: id, addr: bound, udpFD: udpFD, tcpFD: tcpFD, dead: make(chan struct{})}
	a.ctx, a.cancel = context.WithCancel(s.ctx)
	if err := s.loop.add(a); err != nil {
		a.stop()
		return err
	}
	s.attached[sandbox] = a
	s.log.Debug("dns: attached", "sandbox", sandbox, "addr", a.addr)
	return nil
}

// ended records that the loop gave up on a socket of a: the resolver is
// dead and the next Attach replaces it.
func (a *attachment) ended(err error) {
	if err != nil && a.ctx.Err() == nil {
		a.s.log.Warn("dns: resolver stopped", "sandbox", a.sandbox, "err", err)
	}
	a.once.Do(func() { close(a.dead) })
}

// stop takes the sockets out of the loop, ends the forwards (they still
// send their SERVFAIL) and the TCP connections, waits for them and closes
// the sockets.
func (a *attachment) stop() {
	a.s.loop.remove(a)
	a.cancel()
	a.closeConns()
	a.wg.Wait()
	unix.Close(a.udpFD)
	unix.Close(a.tcpFD)
	a.once.Do(func() { close(a.dead) })
}

// Detach closes the resolver of sandbox, if it has one.
func (s *Server) Detach(sandbox string) {
	s.mu.Lock()
	a := s.attached[sandbox]
	delete(s.attached, sandbox)
	s.mu.Unlock()
	if a != nil {
		a.stop()
		s.log.Debug("dns: detached", "sandbox", sandbox)
	}
}

// Close detaches every sandbox and waits for all goroutines.
func (s *Server) Close() error {
	s.mu.Lock()
	wasClosed := s.closed
	s.closed = true
	all := s.attached
	s.attached = make(map[string]*attachment)
	s.mu.Unlock()
	s.cancel()
	var wg sync.WaitGroup
	for _, a := range all {
		wg.Go(a.stop)
	}
	wg.Wait()
	if !wasClosed {
		s.loop.close()
	}
	return nil
}

// Attached returns the sandboxes that have a resolver.
func (s *Server) Attached() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Collect(maps.Keys(s.attached))
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	var st Stats
	s.stats.snapshot(&st)
	s.mu.Lock()
	st.Attached = len(s.attached)
	s.mu.Unlock()
	st.Records = s.table.Load().Len()
	st.Upstreams = s.ups.current()
	st.Inflight = len(s.inflight)
	return st
}
