package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	sockaddr "github.com/hashicorp/go-sockaddr"
	"github.com/hashicorp/memberlist"
)

// transport carries memberlist's packets (UDP) and streams (TCP) on one
// address and port. It replaces memberlist's NetTransport, which allocates
// a 64 KiB buffer for every datagram it receives: at a few hundred members
// gossiping every 80 ms that was most of the garbage the process made, and
// the collector's work delayed gossip enough to slow convergence. Here
// datagrams are read into one buffer and copied out at their own size.
type transport struct {
	addr    netip.AddrPort // bound address; the port is the kernel's pick for port 0
	udp     *net.UDPConn
	tcp     *net.TCPListener
	packets chan *memberlist.Packet
	streams chan net.Conn
	log     *slog.Logger

	done   chan struct{}
	closed atomic.Bool
	wg     sync.WaitGroup

	// What went through the sockets, for GossipTraffic.
	packetsIn, packetsOut, bytesIn, bytesOut, streamsIn, streamsOut atomic.Uint64
}

// Traffic counts what this node's gossip sockets carried since it started:
// datagrams (probes, acks and gossip, each carrying one or several
// memberlist messages) and TCP streams (full-state exchanges, reliable
// messages, fallback pings), in and out.
type Traffic struct {
	PacketsIn, PacketsOut uint64
	BytesIn, BytesOut     uint64 // datagram payloads only
	StreamsIn, StreamsOut uint64 // connections accepted and dialled
}

func (t *transport) traffic() Traffic {
	return Traffic{
		PacketsIn: t.packetsIn.Load(), PacketsOut: t.packetsOut.Load(),
		BytesIn: t.bytesIn.Load(), BytesOut: t.bytesOut.Load(),
		StreamsIn: t.streamsIn.Load(), StreamsOut: t.streamsOut.Load(),
	}
}

var _ memberlist.NodeAwareTransport = (*transport)(nil)

const (
	maxDatagram      = 65536   // the largest UDP payload, so nothing is truncated
	udpRecvBuffer    = 2 << 20 // socket receive buffer asked for; halved until the kernel takes it
	bindAttempts     = 10      // for port 0: TCP picks, UDP may find the port taken
	maxAcceptBackoff = time.Second
)

// newTransport listens on TCP and UDP at host:port. Port 0 binds both to
// the same port of the kernel's choosing.
func newTransport(host string, port int, log *slog.Logger) (*transport, error) {
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return nil, fmt.Errorf("%w: bind address %q: %w", ErrInvalid, host, err)
	}
	ip = ip.Unmap()
	var (
		tcp *net.TCPListener
		udp *net.UDPConn
	)
	for attempt := 0; ; attempt++ {
		tcp, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(ip, uint16(port))))
		if err != nil {
			return nil, fmt.Errorf("listen tcp %s: %w", net.JoinHostPort(host, strconv.Itoa(port)), err)
		}
		bound := tcp.Addr().(*net.TCPAddr).AddrPort().Port()
		udp, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, bound)))
		if err == nil {
			break
		}
		_ = tcp.Close()
		if port != 0 || !errors.Is(err, syscall.EADDRINUSE) || attempt+1 >= bindAttempts {
			return nil, fmt.Errorf("listen udp %s: %w", net.JoinHostPort(host, strconv.Itoa(int(bound))), err)
		}
	}
	for size := udpRecvBuffer; size >= 64<<10; size /= 2 {
		if udp.SetReadBuffer(size) == nil {
			break
		}
	}
	t := &transport{
		addr:    netip.AddrPortFrom(ip, tcp.Addr().(*net.TCPAddr).AddrPort().Port()),
		udp:     udp,
		tcp:     tcp,
		packets: make(chan *memberlist.Packet),
		streams: make(chan net.Conn),
		log:     log,
		done:    make(chan struct{}),
	}
	t.wg.Add(2)
	go t.readPackets()
	go t.acceptStreams()
	return t, nil
}

// Port returns the bound port.
func (t *transport) Port() int { return int(t.addr.Port()) }

// FinalAdvertiseAddr returns the address other members reach this one at:
// the given one, else the bound address, else (bound to all addresses) a
// private address of this host, as memberlist's own transport chooses it.
func (t *transport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	if ip != "" {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return nil, 0, fmt.Errorf("%w: advertise address %q: %w", ErrInvalid, ip, err)
		}
		if port == 0 {
			port = t.Port()
		}
		return net.IP(a.Unmap().AsSlice()), port, nil
	}
	if !t.addr.Addr().IsUnspecified() {
		return net.IP(t.addr.Addr().AsSlice()), t.Port(), nil
	}
	priv, err := sockaddr.GetPrivateIP()
	if err != nil {
		return nil, 0, fmt.Errorf("find a private address to advertise: %w", err)
	}
	a, err := netip.ParseAddr(priv)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: bound to all addresses and no private address found; set the advertise address", ErrInvalid)
	}
	return net.IP(a.Unmap().AsSlice()), t.Port(), nil
}

func (t *transport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (t *transport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	to, err := netip.ParseAddrPort(a.Addr)
	if err != nil {
		ua, rerr := net.ResolveUDPAddr("udp", a.Addr)
		if rerr != nil {
			return time.Time{}, fmt.Errorf("resolve %s: %w", a.Addr, rerr)
		}
		to = ua.AddrPort()
	}
	n, err := t.udp.WriteToUDPAddrPort(b, netip.AddrPortFrom(to.Addr().Unmap(), to.Port()))
	if err == nil {
		t.packetsOut.Add(1)
		t.bytesOut.Add(uint64(n))
	}
	return time.Now(), err
}

func (t *transport) PacketCh() <-chan *memberlist.Packet { return t.packets }

func (t *transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (t *transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	conn, err := d.Dial("tcp", a.Addr)
	if err == nil {
		t.streamsOut.Add(1)
	}
	return conn, err
}

func (t *transport) StreamCh() <-chan net.Conn { return t.streams }

// Shutdown closes both sockets and waits for the readers to stop.
func (t *transport) Shutdown() error {
	if t.closed.Swap(true) {
		return nil
	}
	close(t.done)
	err := errors.Join(t.udp.Close(), t.tcp.Close())
	t.wg.Wait()
	return err
}

// readPackets hands each datagram to memberlist in a buffer of its own
// size; memberlist may keep it while the packet waits in its queues.
func (t *transport) readPackets() {
	defer t.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := t.udp.ReadFromUDPAddrPort(buf)
		now := time.Now()
		if err != nil {
			if t.closed.Load() {
				return
			}
			t.log.Warn("gossip: read udp", "err", err)
			select {
			case <-time.After(10 * time.Millisecond):
				continue
			case <-t.done:
				return
			}
		}
		if n < 1 {
			continue // memberlist's messages start with a type byte
		}
		t.packetsIn.Add(1)
		t.bytesIn.Add(uint64(n))
		p := &memberlist.Packet{
			Buf:       slices.Clone(buf[:n]),
			From:      net.UDPAddrFromAddrPort(netip.AddrPortFrom(from.Addr().Unmap(), from.Port())),
			Timestamp: now,
		}
		select {
		case t.packets <- p:
		case <-t.done:
			return
		}
	}
}

// acceptStreams hands accepted TCP connections to memberlist, backing off
// on errors such as running out of file descriptors.
func (t *transport) acceptStreams() {
	defer t.wg.Done()
	var backoff time.Duration
	for {
		conn, err := t.tcp.AcceptTCP()
		if err != nil {
			if t.closed.Load() {
				return
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), maxAcceptBackoff)
			t.log.Warn("gossip: accept tcp", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
				continue
			case <-t.done:
				return
			}
		}
		backoff = 0
		t.streamsIn.Add(1)
		select {
		case t.streams <- conn:
		case <-t.done:
			_ = conn.Close()
			return
		}
	}
}
