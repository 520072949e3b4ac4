// Package dnsload is fabricbench's DNS load generator: it measures how many
// queries a DNS server answers per second, and how fast, the way dnsperf
// does. It is benchmark code, kept out of the agent's DNS server package.
package dnsload

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
)

// queryTimeout is when Run counts a query as lost and sends another.
const queryTimeout = time.Second

// Run sends A queries for name to the DNS server at addr over UDP for
// dur (or until ctx ends) from clients concurrent clients, each with one
// query outstanding: it sends its next query as soon as the answer to the
// previous one arrives. It returns the answered queries per second and the
// median and 99th percentile latency.
//
// Like dnsperf, the generator is built to cost less than the server it
// measures: the clients are spread over one socket per CPU, and each
// socket sends and receives in batches (sendmmsg, recvmmsg). A query
// unanswered within a second, or answered with SERVFAIL, is a failure;
// more than 1% of failures is an error (the numbers are still returned).
func Run(ctx context.Context, addr string, clients int, dur time.Duration, name string) (qps float64, p50, p99 time.Duration, err error) {
	if clients < 1 || dur <= 0 {
		return 0, 0, 0, fmt.Errorf("load test: need at least one client and a duration, got %d, %v", clients, dur)
	}
	server, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("load test: %w", err)
	}
	query, err := new(dns.Msg).SetQuestion(dns.Fqdn(name), dns.TypeA).Pack()
	if err != nil {
		return 0, 0, 0, fmt.Errorf("load test: pack query for %q: %w", name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, dur)
	defer cancel()

	// At most 256 clients per socket: the query ID is client<<8 | sequence.
	workers := max(min(runtime.GOMAXPROCS(0), clients), (clients+255)/256)
	results := make([]loadWorker, workers)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range workers {
		n := clients / workers
		if i < clients%workers {
			n++
		}
		results[i] = loadWorker{server: server, query: query, clients: n}
		wg.Go(func() { results[i].run(ctx) })
	}
	wg.Wait()
	elapsed := time.Since(start)

	var all []uint32
	var failures int
	var errs []error
	for _, r := range results {
		all = append(all, r.lat...)
		failures += r.failures
		errs = append(errs, r.err)
	}
	if err := errors.Join(errs...); err != nil {
		return 0, 0, 0, fmt.Errorf("load test: %w", err)
	}
	if len(all) == 0 {
		return 0, 0, 0, fmt.Errorf("load test: no answer from %s (%d failures)", addr, failures)
	}
	slices.Sort(all)
	qps = float64(len(all)) / elapsed.Seconds()
	p50 = time.Duration(all[len(all)*50/100])
	p99 = time.Duration(all[min(len(all)*99/100, len(all)-1)])
	if failures*100 > len(all)+failures {
		err = fmt.Errorf("load test: %d of %d queries failed", failures, len(all)+failures)
	}
	return qps, p50, p99, err
}

// loadWorker runs some of Run's clients on one socket.
type loadWorker struct {
	server  *net.UDPAddr
	query   []byte
	clients int

	lat      []uint32 // nanoseconds
	failures int
	err      error
}

func (w *loadWorker) run(ctx context.Context) {
	conn, err := net.ListenUDP("udp4", nil)
	if err != nil {
		w.err = fmt.Errorf("open client socket: %w", err)
		return
	}
	defer conn.Close()
	_ = conn.SetReadBuffer(1 << 20)
	pc := ipv4.NewPacketConn(conn)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()

	q := newInflight(w.query, w.clients, w.server)
	in := make([]ipv4.Message, 64)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, 512)}
	}
	now := time.Now()
	for i := range q.cs {
		q.send(i, now)
	}
	for ctx.Err() == nil {
		if err := q.flush(pc); err != nil {
			if ctx.Err() == nil {
				w.err = fmt.Errorf("send: %w", err)
			}
			return
		}
		_ = conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if ctx.Err() != nil {
			break
		}
		n, err := pc.ReadBatch(in, 0)
		n = max(n, 0)
		now = time.Now()
		for _, m := range in[:n] {
			w.answer(q, m.Buffers[0][:m.N], now)
		}
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				w.err = fmt.Errorf("receive: %w", err)
				return
			}
		}
		for i := range q.cs { // lost queries
			if now.Sub(q.cs[i].sent) > queryTimeout {
				w.failures++
				q.send(i, now)
			}
		}
	}
}

// answer counts reply b: its latency, or a failure for SERVFAIL; then
// that client sends its next query. A reply to a query already counted
// as lost, or too short to be one, is ignored.
func (w *loadWorker) answer(q *inflight, b []byte, now time.Time) {
	if len(b) < 12 {
		return
	}
	id := binary.BigEndian.Uint16(b)
	i := int(id >> 8)
	if i >= len(q.cs) || uint8(id) != q.cs[i].seq {
		return // a late answer to a query already counted as lost
	}
	if b[3]&0xF == dns.RcodeServerFailure {
		w.failures++
	} else {
		w.lat = append(w.lat, uint32(now.Sub(q.cs[i].sent)))
	}
	q.send(i, now)
}

// inflight is a worker's clients, one query outstanding each, and the
// batch of queries to send next. A query's ID is its client's index and
// a sequence number, so a late answer is told from the current one.
type inflight struct {
	cs     []pendingQuery
	out    []ipv4.Message
	server *net.UDPAddr
}

func newInflight(query []byte, clients int, server *net.UDPAddr) *inflight {
	q := &inflight{out: make([]ipv4.Message, 0, clients), server: server}
	q.cs = make([]pendingQuery, clients)
	for i := range q.cs {
		q.cs[i].msg = slices.Clone(query)
	}
	return q
}

// pendingQuery is one client's query and when it was sent.
type pendingQuery struct {
	msg  []byte
	seq  uint8
	sent time.Time
}

// send queues client i's next query, sent at now.
func (q *inflight) send(i int, now time.Time) {
	c := &q.cs[i]
	c.seq++
	binary.BigEndian.PutUint16(c.msg, uint16(i)<<8|uint16(c.seq))
	c.sent = now
	q.out = append(q.out, ipv4.Message{Buffers: [][]byte{c.msg}, Addr: q.server})
}

// flush sends the queued queries, in up to 8 batches.
func (q *inflight) flush(pc *ipv4.PacketConn) error {
	for pending, tries := q.out, 0; len(pending) > 0 && tries < 8; tries++ {
		n, err := pc.WriteBatch(pending, 0)
		if err != nil && n <= 0 {
			return err
		}
		pending = pending[n:]
	}
	q.out = q.out[:0]
	return nil
}
