package dns

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// advertisedUDPSize is the EDNS0 payload size the server offers: the
// DNS-flag-day value that avoids fragmentation.
const advertisedUDPSize = 1232

// accept counts what the miekg/dns server rejects before the handler runs.
func (s *Server) accept(dh dns.Header) dns.MsgAcceptAction {
	act := dns.DefaultMsgAcceptFunc(dh)
	switch act {
	case dns.MsgIgnore, dns.MsgReject:
		s.stats.malformed.Add(1)
	case dns.MsgRejectNotImplemented:
		s.stats.refused.Add(1)
	}
	return act
}

// invalid counts packets the miekg/dns server could not parse.
func (s *Server) invalid([]byte, error) { s.stats.malformed.Add(1) }

// serve answers one query from sandbox. The request message is owned by
// this call and becomes the reply, which saves allocations on the hot path.
func (s *Server) serve(ctx context.Context, sandbox string, w dns.ResponseWriter, r *dns.Msg) {
	tcp := isTCP(w)
	opt := r.IsEdns0()
	switch {
	case r.Opcode != dns.OpcodeQuery:
		s.stats.refused.Add(1)
		s.replyRcode(w, r, opt, tcp, dns.RcodeNotImplemented)
		return
	case len(r.Question) != 1:
		s.stats.malformed.Add(1)
		s.replyRcode(w, r, opt, tcp, dns.RcodeFormatError)
		return
	case opt != nil && opt.Version() != 0:
		s.stats.refused.Add(1)
		s.replyRcode(w, r, opt, tcp, dns.RcodeBadVers)
		return
	case r.Question[0].Qclass != dns.ClassINET:
		s.stats.refused.Add(1)
		s.replyRcode(w, r, opt, tcp, dns.RcodeRefused)
		return
	}
	q := r.Question[0]
	t := s.table.Load()
	if q.Qtype == dns.TypePTR {
		if ip, ok := parsePTR(q.Name); ok {
			if names, _ := t.reverse(sandbox, ip); len(names) > 0 {
				s.stats.local.Add(1)
				s.answerPTR(w, r, opt, tcp, names)
				return
			}
		}
		s.forwardQuery(ctx, sandbox, w, r, opt, tcp)
		return
	}
	var abuf [8]netip.Addr
	var ibuf [8]net.IP
	// A name that exists only on networks the querier is not on is treated
	// as unknown and forwarded: answering NXDOMAIN would tell a sandbox
	// which names exist elsewhere on the host, and an alias such as
	// github.com on one network would break that name for every other.
	addrs, ips, _ := t.lookup(abuf[:0], ibuf[:0], sandbox, q.Name)
	if len(addrs) > 0 {
		s.stats.local.Add(1)
		s.answerAddrs(w, r, opt, tcp, addrs, ips)
		return
	}
	s.forwardQuery(ctx, sandbox, w, r, opt, tcp)
}

// answerAddrs replies with the addresses that match the question type:
// A records for A, AAAA for AAAA, both for ANY; any other type of a local
// name gets NOERROR with no answer (as Docker does), not NXDOMAIN.
func (s *Server) answerAddrs(w dns.ResponseWriter, r *dns.Msg, opt *dns.OPT, tcp bool, addrs []netip.Addr, ips []net.IP) {
	q := r.Question[0]
	var n4, n6 int
	for _, a := range addrs {
		if a.Is4() {
			n4++
		} else {
			n6++
		}
	}
	wantA := q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY
	wantAAAA := q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeANY
	var rrs []dns.RR
	var as []dns.A
	var aaaas []dns.AAAA
	if wantA && n4 > 0 {
		as = make([]dns.A, 0, n4)
	}
	if wantAAAA && n6 > 0 {
		aaaas = make([]dns.AAAA, 0, n6)
	}
	if n := cap(as) + cap(aaaas); n > 0 {
		rrs = make([]dns.RR, 0, n)
	}
	hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: s.ttl}
	for i, a := range addrs {
		switch {
		case a.Is4() && wantA:
			hdr.Rrtype = dns.TypeA
			as = append(as, dns.A{Hdr: hdr, A: ips[i]})
			rrs = append(rrs, &as[len(as)-1])
		case !a.Is4() && wantAAAA:
			hdr.Rrtype = dns.TypeAAAA
			aaaas = append(aaaas, dns.AAAA{Hdr: hdr, AAAA: ips[i]})
			rrs = append(rrs, &aaaas[len(aaaas)-1])
		}
	}
	s.reply(w, r, opt, tcp, dns.RcodeSuccess, rrs)
}

func (s *Server) answerPTR(w dns.ResponseWriter, r *dns.Msg, opt *dns.OPT, tcp bool, names []string) {
	ptrs := make([]dns.PTR, len(names))
	rrs := make([]dns.RR, len(names))
	for i, n := range names {
		ptrs[i] = dns.PTR{
			Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: s.ttl},
			Ptr: dns.Fqdn(n),
		}
		rrs[i] = &ptrs[i]
	}
	s.reply(w, r, opt, tcp, dns.RcodeSuccess, rrs)
}

func (s *Server) replyRcode(w dns.ResponseWriter, r *dns.Msg, opt *dns.OPT, tcp bool, rcode int) {
	s.reply(w, r, opt, tcp, rcode, nil)
}

var packBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// reply turns the request r into the answer and writes it: the question
// is kept, the request's OPT record is reused for ours (DO bit kept,
// options dropped), a UDP answer too large for the client is truncated.
func (s *Server) reply(w dns.ResponseWriter, r *dns.Msg, opt *dns.OPT, tcp bool, rcode int, answer []dns.RR) {
	r.Response = true
	r.Authoritative = rcode == dns.RcodeSuccess || rcode == dns.RcodeNameError
	r.RecursionAvailable = true
	r.Truncated = false
	r.AuthenticatedData = false
	r.Zero = false
	r.Rcode = rcode
	r.Answer = answer
	r.Ns = nil
	r.Extra = r.Extra[:0]
	if rcode == dns.RcodeFormatError || rcode == dns.RcodeNotImplemented {
		r.Answer = nil
	}
	size := dns.MinMsgSize
	if opt != nil {
		size = max(int(opt.UDPSize()), dns.MinMsgSize)
		opt.Hdr.Ttl &= 1 << 15 // keep DO; version 0, extended rcode set by Pack
		opt.Option = nil
		opt.SetUDPSize(advertisedUDPSize)
		r.Extra = append(r.Extra, opt)
	} else if rcode > 0xF {
		r.Rcode = dns.RcodeFormatError // an extended rcode needs an OPT record
	}
	bp := packBufs.Get().(*[]byte)
	defer packBufs.Put(bp)
	out, err := r.PackBuffer(*bp)
	if err == nil && !tcp && len(out) > size {
		r.Truncate(size)
		out, err = r.PackBuffer(*bp)
	}
	if err != nil {
		s.log.Debug("dns: pack reply", "err", err)
		return
	}
	if cap(out) <= 64*1024 {
		*bp = out[:0]
	}
	_, _ = w.Write(out)
}

// isTCP reports whether the query came over TCP (no size limit, no
// truncation).
func isTCP(w dns.ResponseWriter) bool {
	if t, ok := w.(interface{ viaTCP() bool }); ok {
		return t.viaTCP() // without building an address per query
	}
	_, ok := w.RemoteAddr().(*net.TCPAddr)
	return ok
}

// parsePTR returns the address of a reverse name in in-addr.arpa or
// ip6.arpa.
func parsePTR(name string) (netip.Addr, bool) {
	name = strings.TrimSuffix(name, ".")
	const v4, v6 = ".in-addr.arpa", ".ip6.arpa"
	switch {
	case len(name) > len(v4) && strings.EqualFold(name[len(name)-len(v4):], v4):
		labels := strings.Split(name[:len(name)-len(v4)], ".")
		if len(labels) != 4 {
			return netip.Addr{}, false
		}
		var b [4]byte
		for i, l := range labels {
			if len(l) == 0 || len(l) > 3 || (len(l) > 1 && l[0] == '0') {
				return netip.Addr{}, false
			}
			v := 0
			for _, c := range []byte(l) {
				if c < '0' || c > '9' {
					return netip.Addr{}, false
				}
				v = v*10 + int(c-'0')
			}
			if v > 255 {
				return netip.Addr{}, false
			}
			b[3-i] = byte(v)
		}
		return netip.AddrFrom4(b), true
	case len(name) > len(v6) && strings.EqualFold(name[len(name)-len(v6):], v6):
		nibbles := name[:len(name)-len(v6)]
		if len(nibbles) != 63 {
			return netip.Addr{}, false
		}
		var b [16]byte
		for i := 0; i < 32; i++ {
			c := nibbles[2*i]
			if i < 31 && nibbles[2*i+1] != '.' {
				return netip.Addr{}, false
			}
			var v byte
			switch {
			case c >= '0' && c <= '9':
				v = c - '0'
			case c >= 'a' && c <= 'f':
				v = c - 'a' + 10
			case c >= 'A' && c <= 'F':
				v = c - 'A' + 10
			default:
				return netip.Addr{}, false
			}
			// nibble i counts from the least significant end
			pos := 31 - i
			if pos%2 == 0 {
				b[pos/2] |= v << 4
			} else {
				b[pos/2] |= v
			}
		}
		return netip.AddrFrom16(b).Unmap(), true
	}
	return netip.Addr{}, false
}
