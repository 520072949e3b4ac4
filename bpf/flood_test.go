//go:build linux

package bpf

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	fabricns "github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// TestSYNFloodKeepsEstablished: a SYN flood from outside against a
// published port, while a sandbox's masqueraded TCP stream runs. The
// flooding source is held to its quota of unanswered connections (the
// rest dropped, counted as ct-quota), the table stays small, and the
// stream keeps flowing, never reset.
func TestSYNFloodKeepsEstablished(t *testing.T) {
	l := newNATNSLab(t)
	const quota, flood = 64, 3000
	if err := l.objs.SetPolicy(Policy{CTPendingMax: quota}); err != nil {
		t.Fatal(err)
	}
	serveStream(t, l.outPath, labOutsideAddr+":8001")
	serveStream(t, l.s1.path, "0.0.0.0:80") // the published port's target answers SYNs

	conn, err := netnstest.Dial(l.s2.path, "tcp4", labOutsideAddr+":8001", 3*time.Second)
	if err != nil {
		t.Fatalf("masqueraded stream: %v", err)
	}
	defer conn.Close()
	var echoed atomic.Int64
	streamErr := make(chan error, 1)
	stop := make(chan struct{})
	go func() {
		r := bufio.NewReader(conn)
		for i := 0; ; i++ {
			select {
			case <-stop:
				streamErr <- nil
				return
			default:
			}
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			msg := fmt.Sprintf("line %d", i)
			if _, err := fmt.Fprintln(conn, msg); err != nil {
				streamErr <- fmt.Errorf("write: %w", err)
				return
			}
			got, err := r.ReadString('\n')
			if err != nil || got != msg+"\n" {
				streamErr <- fmt.Errorf("read %q: %v", got, err)
				return
			}
			echoed.Add(1)
		}
	}()
	netnstest.Eventually(t, 10*time.Second, "stream to run", func() bool { return echoed.Load() > 10 })

	quotaDrops := CounterKey{DirFromUplink, VerdictDrop, ReasonCTQuota}
	before := readCounters(t, l.objs)[quotaDrops].Packets
	if err := synFlood(l.outPath, netip.MustParseAddr(labOutsideAddr), netip.MustParseAddr(labUplinkAddr), 8080, flood); err != nil {
		t.Fatal(err)
	}
	duringFlood := echoed.Load()
	netnstest.Eventually(t, 10*time.Second, "stream to go on after the flood", func() bool { return echoed.Load() > duringFlood+50 })
	close(stop)
	if err := <-streamErr; err != nil {
		t.Errorf("stream broke during the flood: %v", err)
	}
	dropped := readCounters(t, l.objs)[quotaDrops].Packets - before
	// The window is 5 s; under load the flood may span two.
	if dropped < flood-4*quota {
		t.Errorf("%d of %d flood SYNs dropped as ct-quota, want at least %d", dropped, flood, flood-4*quota)
	}
	n, _, err := l.objs.ConntrackStats()
	if err != nil {
		t.Fatal(err)
	}
	if n > 2*4*quota+16 {
		t.Errorf("conntrack holds %d entries after a flood held to a quota of %d", n, quota)
	}
	t.Logf("flood of %d SYNs: %d dropped as ct-quota; %d conntrack entries; stream echoed %d lines", flood, dropped, n, echoed.Load())
}

// serveStream echoes every TCP connection's bytes until the test ends.
func serveStream(t *testing.T, path, addr string) {
	t.Helper()
	netnstest.Serve(t, path, "tcp4", addr, 60*time.Second, func(c net.Conn) { _, _ = io.Copy(c, c) })
}

// synFlood sends n TCP SYNs from src (ports 20000 on) to dst:port over a
// raw socket in the namespace at path: no handshake, nothing kept.
func synFlood(path string, src, dst netip.Addr, port uint16, n int) error {
	return fabricns.Do(path, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer unix.Close(fd)
		to := &unix.SockaddrInet4{Addr: dst.As4()}
		for i := range n {
			seg := synSegment(src, dst, uint16(20000+i%40000), port, uint32(i))
			if err := unix.Sendto(fd, seg, 0, to); err != nil {
				return fmt.Errorf("send SYN %d: %w", i, err)
			}
		}
		return nil
	})
}

// synSegment is a bare TCP SYN (no options) with its checksum.
func synSegment(src, dst netip.Addr, sport, dport uint16, seq uint32) []byte {
	seg := make([]byte, 20)
	binary.BigEndian.PutUint16(seg[0:], sport)
	binary.BigEndian.PutUint16(seg[2:], dport)
	binary.BigEndian.PutUint32(seg[4:], seq)
	seg[12] = 5 << 4
	seg[13] = tcpFlagSYN
	binary.BigEndian.PutUint16(seg[14:], 64240)
	s, d := src.As4(), dst.As4()
	pseudo := append(append(append([]byte{}, s[:]...), d[:]...), 0, unix.IPPROTO_TCP, 0, byte(len(seg)))
	var sum uint32
	for _, b := range [][]byte{pseudo, seg} {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(seg[16:], ^uint16(sum))
	return seg
}

// TestConntrackEvictions: a full table evicts, and ConntrackEvictions
// counts it (inserts beyond the table's size); a flush is no eviction.
func TestConntrackEvictions(t *testing.T) {
	requireRoot(t)
	const size = 256
	spec, err := EndpointSpec()
	if err != nil {
		t.Fatal(err)
	}
	if err := SetConntrackMax(spec, size); err != nil {
		t.Fatal(err)
	}
	o, err := LoadSpec(spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	closeAtEnd(t, "endpoint objects", o)
	put(t, o, []Network{netA, netB}, a1)
	l := &natLab{o: o, u: mustLoadOn(t, o, "uplink", LoadUplink)}
	l.setPorts(t, 20000, 60000)

	const conns = 1000
	for i := range conns {
		f := flow{proto: protoUDP, src: a1.Addr, sport: uint16(10000 + i), dst: outside, dport: 53, payload: []byte("q")}
		l.expect(t, hookToUplink, uplinkIfindex, toOutside(f), tcActOK, ReasonSNAT)
	}
	entries, capacity, err := o.ConntrackStats()
	if err != nil {
		t.Fatal(err)
	}
	ev, err := o.ConntrackEvictions(entries)
	if err != nil {
		t.Fatal(err)
	}
	if capacity != size || entries > size {
		t.Errorf("table holds %d of %d, want at most %d", entries, capacity, size)
	}
	if want := uint64(2*conns - size); ev < want || ev > 2*conns {
		t.Errorf("%d evictions counted after %d inserts into %d entries, want at least %d", ev, 2*conns, size, want)
	}
	if err := o.FlushConntrack(); err != nil {
		t.Fatal(err)
	}
	entries, _, _ = o.ConntrackStats()
	if after, _ := o.ConntrackEvictions(entries); after != ev {
		t.Errorf("flush changed the evictions from %d to %d", ev, after)
	}
	t.Logf("%d connections through a %d-entry table: %d evictions counted", conns, size, ev)
}
