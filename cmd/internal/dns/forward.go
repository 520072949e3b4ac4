package dns

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

const defaultResolvConf = "/etc/resolv.conf"

// upstreams is the list of resolvers to forward to: fixed by the config, or
// the nameservers of resolv.conf, re-read when the file changes (checked at
// most once per resolvEvery, on the forwarding path: no goroutine).
type upstreams struct {
	fixed     []string
	path      string
	port      string
	every     time.Duration
	log       *slog.Logger
	list      atomic.Pointer[[]string]
	lastCheck atomic.Int64 // unix nanos
	preferred atomic.Uint32

	mu    sync.Mutex // serialises re-reads
	stamp fileStamp
}

type fileStamp struct {
	dev, ino uint64
	size     int64
	mtime    time.Time
}

func newUpstreams(cfg Config) (*upstreams, error) {
	u := &upstreams{path: cfg.resolvPath, port: cfg.resolvPort, every: cfg.resolvEvery, log: cfg.Log}
	if len(cfg.Upstreams) > 0 {
		for _, a := range cfg.Upstreams {
			host, port, err := net.SplitHostPort(a)
			if err != nil || port == "" {
				return nil, fmt.Errorf("upstream %q must be host:port: %w", a, err)
			}
			if _, err := netip.ParseAddr(host); err != nil {
				return nil, fmt.Errorf("upstream %q: host must be an IP address: %w", a, err)
			}
		}
		u.fixed = slices.Clone(cfg.Upstreams)
		u.list.Store(&u.fixed)
		return u, nil
	}
	if u.path == "" {
		u.path = defaultResolvConf
	}
	if u.port == "" {
		u.port = "53"
	}
	if u.every == 0 {
		u.every = time.Second
	}
	u.list.Store(&[]string{})
	u.refresh(time.Now())
	return u, nil
}

// current returns the upstreams, re-reading resolv.conf if it is due.
func (u *upstreams) current() []string {
	if u.fixed == nil {
		now := time.Now()
		last := u.lastCheck.Load()
		if now.UnixNano()-last >= int64(u.every) && u.lastCheck.CompareAndSwap(last, now.UnixNano()) {
			u.refresh(now)
		}
	}
	return *u.list.Load()
}

// refresh re-reads resolv.conf if its identity, size or mtime changed. A
// missing or unreadable file keeps the last good list.
func (u *upstreams) refresh(now time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.lastCheck.Store(now.UnixNano())
	fi, err := os.Stat(u.path)
	if err != nil {
		if u.stamp != (fileStamp{}) || len(*u.list.Load()) == 0 {
			u.log.Info("dns: cannot read upstreams, keeping the last ones", "path", u.path, "err", err)
		}
		u.stamp = fileStamp{}
		return
	}
	st := fileStamp{size: fi.Size(), mtime: fi.ModTime()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.dev, st.ino = uint64(sys.Dev), sys.Ino
	}
	if st == u.stamp {
		return
	}
	data, err := os.ReadFile(u.path)
	if err != nil {
		u.log.Info("dns: cannot read upstreams, keeping the last ones", "path", u.path, "err", err)
		return
	}
	u.stamp = st
	list := parseNameservers(data, u.port)
	if !slices.Equal(list, *u.list.Load()) {
		u.log.Info("dns: upstreams", "path", u.path, "servers", list)
		u.list.Store(&list)
		u.preferred.Store(0)
	}
}

// parseNameservers returns the nameserver lines of a resolv.conf as
// host:port.
func parseNameservers(data []byte, port string) []string {
	list := []string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		ip, err := netip.ParseAddr(f[1])
		if err != nil {
			continue
		}
		list = append(list, net.JoinHostPort(ip.String(), port))
	}
	return list
}

// errBadReply is an upstream reply that does not answer our question.
var errBadReply = errors.New("reply does not match the question")

// forwardQuery forwards r for sandbox unless the sandbox may not forward
// (REFUSED at once), or it has its fair share of forwards waiting already,
// or MaxInflight forwards are waiting in all (SERVFAIL at once). A writer
// that must not block (the UDP batch loop) gets the forward in a goroutine.
func (s *Server) forwardQuery(ctx context.Context, sandbox string, w dns.ResponseWriter, r *dns.Msg, opt *dns.OPT, tcp bool) {
	if s.noForward(sandbox) {
		s.stats.refused.Add(1)
		s.replyRcode(w, r, opt, tcp, dns.RcodeRefused)
		return
	}
	if !s.shares.take(sandbox, s.cfg.MaxInflight) {
		s.stats.inflightRejected.Add(1)
		s.servfail(w, r, opt, tcp)
		return
	}
	select {
	case s.inflight <- struct{}{}:
	default:
		s.shares.give(sandbox)
		s.stats.inflightRejected.Add(1)
		s.servfail(w, r, opt, tcp)
		return
	}
	run := func(w dns.ResponseWriter) {
		defer func() {
			<-s.inflight
			s.shares.give(sandbox)
		}()
		s.forward(ctx, w, r, opt, tcp)
	}
	if aw, ok := w.(asyncWriter); ok {
		aw.goAsync(run)
		return
	}
	run(w)
}

// forward relays r to the upstreams and the reply to the client. The
// whole forward, over every upstream and the TCP retry, takes at most
// UpstreamTimeout; any failure is SERVFAIL.
func (s *Server) forward(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, opt *dns.OPT, tcp bool) {
	ups := s.ups.current()
	if len(ups) == 0 {
		s.servfail(w, r, opt, tcp)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.UpstreamTimeout)
	defer cancel()

	clientID := r.Id
	first := int(s.ups.preferred.Load())
	var fallback *dns.Msg // a SERVFAIL/REFUSED reply, used if nothing better comes
	for i := range ups {
		deadline, _ := ctx.Deadline()
		left := time.Until(deadline)
		if left <= 0 || ctx.Err() != nil {
			break
		}
		idx := (first + i) % len(ups)
		// Share the time left among the upstreams not tried yet, so a dead
		// first one cannot use it all.
		tryCtx, tryCancel := context.WithTimeout(ctx, left/time.Duration(len(ups)-i))
		start := time.Now()
		resp, err := s.exchange(tryCtx, r, ups[idx], tcp)
		tryCancel()
		if err != nil {
			s.log.Debug("dns: upstream failed", "upstream", ups[idx], "name", r.Question[0].Name, "err", err)
			continue
		}
		if resp.Rcode == dns.RcodeServerFailure || resp.Rcode == dns.RcodeRefused {
			fallback = resp
			continue
		}
		s.stats.observeUpstream(time.Since(start))
		if idx != first {
			s.ups.preferred.Store(uint32(idx))
		}
		s.relay(w, resp, clientID, r, tcp)
		return
	}
	if fallback != nil {
		s.stats.forwarded.Add(1)
		fallback.Id = clientID
		s.write(w, fallback, r, tcp)
		return
	}
	r.Id = clientID
	s.servfail(w, r, opt, tcp)
}

func (s *Server) servfail(w dns.ResponseWriter, r *dns.Msg, opt *dns.OPT, tcp bool) {
	s.stats.forwardFailed.Add(1)
	s.replyRcode(w, r, opt, tcp, dns.RcodeServerFailure)
}

func (s *Server) relay(w dns.ResponseWriter, resp *dns.Msg, clientID uint16, req *dns.Msg, tcp bool) {
	s.stats.forwarded.Add(1)
	resp.Id = clientID
	s.write(w, resp, req, tcp)
}

// write sends an upstream's reply, truncated to what a UDP client accepts.
func (s *Server) write(w dns.ResponseWriter, resp, req *dns.Msg, tcp bool) {
	if !tcp {
		size := dns.MinMsgSize
		if o := req.IsEdns0(); o != nil {
			size = max(int(o.UDPSize()), dns.MinMsgSize)
		}
		resp.Truncate(size)
	} else {
		resp.Compress = true
	}
	if err := w.WriteMsg(resp); err != nil {
		s.log.Debug("dns: write reply", "err", err)
	}
}

// exchange asks one upstream, over UDP first (TCP if the client used TCP
// or the UDP reply was truncated), with a fresh random query ID on a fresh
// socket. The socket is opened by a goroutine of the agent, so in the
// agent's namespace, not the sandbox's.
func (s *Server) exchange(ctx context.Context, r *dns.Msg, addr string, tcp bool) (*dns.Msg, error) {
	r.Id = dns.Id()
	if !tcp {
		resp, err := exchangeOnce(ctx, r, addr, "udp")
		if err != nil || !resp.Truncated {
			return resp, err
		}
	}
	return exchangeOnce(ctx, r, addr, "tcp")
}

func exchangeOnce(ctx context.Context, r *dns.Msg, addr, network string) (*dns.Msg, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s %s: %w", network, addr, err)
	}
	defer c.Close()
	// The miekg/dns client honours only the context's deadline: cancel
	// (Detach, Close) must also unblock the read.
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	client := dns.Client{Net: network, UDPSize: dns.DefaultMsgSize}
	resp, _, err := client.ExchangeWithConnContext(ctx, r, &dns.Conn{Conn: c})
	if err != nil {
		return nil, fmt.Errorf("exchange with %s over %s: %w", addr, network, err)
	}
	if len(resp.Question) > 0 && (resp.Question[0].Qtype != r.Question[0].Qtype ||
		!strings.EqualFold(resp.Question[0].Name, r.Question[0].Name)) {
		return nil, fmt.Errorf("exchange with %s: %w", addr, errBadReply)
	}
	return resp, nil
}
