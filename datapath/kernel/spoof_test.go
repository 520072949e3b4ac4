package kernel

import (
	"encoding/binary"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
	fabricns "github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// udpSink records the payloads of the datagrams a namespace receives on
// addr.
type udpSink struct {
	mu  sync.Mutex
	got map[string]bool
}

func newUDPSink(t *testing.T, nsPath, addr string) *udpSink {
	t.Helper()
	s := &udpSink{got: map[string]bool{}}
	netnstest.ServePackets(t, nsPath, "udp4", addr, func(_ net.PacketConn, payload []byte, _ net.Addr) {
		s.mu.Lock()
		s.got[string(payload)] = true
		s.mu.Unlock()
	})
	return s
}

func (s *udpSink) has(payload string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got[payload]
}

// sendUDPFrom sends payload from inside the namespace at nsPath with the
// source address src, which need not be the sandbox's (IP_TRANSPARENT):
// the way a hostile sandbox claims a neighbour's address.
func sendUDPFrom(t *testing.T, nsPath string, src netip.Addr, dst, payload string) {
	t.Helper()
	err := fabricns.Do(nsPath, func() error {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TRANSPARENT, 1) })
			if err != nil {
				return err
			}
			return serr
		}}
		pc, err := lc.ListenPacket(t.Context(), "udp4", net.JoinHostPort(src.String(), "0"))
		if err != nil {
			return err
		}
		defer pc.Close()
		to, err := net.ResolveUDPAddr("udp4", dst)
		if err != nil {
			return err
		}
		_, err = pc.WriteTo([]byte(payload), to)
		return err
	})
	if err != nil {
		t.Fatalf("send udp %s -> %s in %s: %v", src, dst, nsPath, err)
	}
}

// TestSpoofedSourceDropped: a sandbox sending with its bridge neighbour's
// address reaches neither another sandbox of the bridge, nor the host, nor a sandbox of
// another network (through a published port), nor the outside, while its
// genuine datagrams reach all four.
func TestSpoofedSourceDropped(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	_, outPath := l.addOutside()
	a := l.bridgeNetwork("neta", "br-sa", "10.91.1.0/24", false)
	b := l.bridgeNetwork("netb", "br-sb", "10.91.2.0/24", false)
	att := l.join(a, "att", "vsatt", 2)
	vic := l.join(a, "vic", "vsvic", 3)
	nbr := l.join(a, "nbr", "vsnbr", 4)
	const hostPort = 18053
	oth := l.join(b, "oth", "vsoth", 2, datapath.PortMapping{Proto: "udp", HostPort: hostPort, Port: 5353})

	targets := []struct {
		what, dst string
		sink      *udpSink
	}{
		{"neighbour", "10.91.1.4:7001", newUDPSink(t, nbr.path, "10.91.1.4:7001")},
		{"host", "10.91.1.1:7002", newUDPSink(t, l.hostPath, "10.91.1.1:7002")},
		{"other network's published port", fmt.Sprintf("10.91.1.1:%d", hostPort), newUDPSink(t, oth.path, "0.0.0.0:5353")},
		{"outside", uplinkOutside + ":7003", newUDPSink(t, outPath, uplinkOutside+":7003")},
	}
	own, spoofed := att.ep.Addr.Addr(), vic.ep.Addr.Addr()
	// Neighbours resolved first: no datagram waits for ARP.
	mustPing(t, att.name, "10.91.1.4")
	mustPing(t, att.name, "10.91.1.1")
	for _, tg := range targets {
		// Spoofed first: once the genuine datagram, sent after it on the
		// same path, has arrived, the spoofed one would have too.
		for range 3 {
			sendUDPFrom(t, att.path, spoofed, tg.dst, "spoofed")
		}
		netnstest.Eventually(t, 5*time.Second, "genuine datagram to "+tg.what, func() bool {
			sendUDPFrom(t, att.path, own, tg.dst, "genuine")
			return tg.sink.has("genuine")
		})
		if tg.sink.has("spoofed") {
			t.Errorf("%s received a datagram with its neighbour's source address", tg.what)
		}
	}
	// Source 0.0.0.0 (a DHCP client's) is not the sandbox's address either,
	// as on the eBPF datapath; the neighbour would take it as a broadcast.
	bsink := newUDPSink(t, nbr.path, "0.0.0.0:7005")
	bcast := netip.MustParseAddr("255.255.255.255")
	ff := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	for range 3 {
		sendRaw(t, att.path, "eth0", udpFrame(att.ep.MAC, ff, netip.IPv4Unspecified(), bcast, 7005, "unspecified"))
	}
	netnstest.Eventually(t, 5*time.Second, "genuine broadcast datagram", func() bool {
		sendRaw(t, att.path, "eth0", udpFrame(att.ep.MAC, ff, own, bcast, 7005, "genuine"))
		return bsink.has("genuine")
	})
	if bsink.has("unspecified") {
		t.Error("the neighbour received a broadcast with source 0.0.0.0")
	}
	// Its own address from another sandbox's MAC is spoofed too.
	nsink := targets[0].sink
	for range 3 {
		sendRaw(t, att.path, "eth0", udpFrame(vic.ep.MAC, nbr.ep.MAC, own, nbr.ep.Addr.Addr(), 7001, "foreign-mac"))
	}
	netnstest.Eventually(t, 5*time.Second, "genuine raw datagram", func() bool {
		sendRaw(t, att.path, "eth0", udpFrame(att.ep.MAC, nbr.ep.MAC, own, nbr.ep.Addr.Addr(), 7001, "genuine-raw"))
		return nsink.has("genuine-raw")
	})
	if nsink.has("foreign-mac") {
		t.Error("the neighbour received a frame with another sandbox's MAC as source")
	}
}

// udpFrame is an Ethernet+IPv4+UDP frame (no UDP checksum).
func udpFrame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, port uint16, payload string) []byte {
	f := append(slices.Clone([]byte(dstMAC)), srcMAC...)
	f = binary.BigEndian.AppendUint16(f, unix.ETH_P_IP)
	ip := []byte{0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, unix.IPPROTO_UDP, 0, 0}
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	s, d := src.As4(), dst.As4()
	ip = append(append(ip, s[:]...), d[:]...)
	var sum uint32
	for i := 0; i < len(ip); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	f = append(f, ip...)
	f = binary.BigEndian.AppendUint16(f, port)
	f = binary.BigEndian.AppendUint16(f, port)
	f = binary.BigEndian.AppendUint16(f, uint16(8+len(payload)))
	f = append(f, 0, 0)
	return append(f, payload...)
}

// ARP operations (RFC 826).
const (
	arpRequest = 1
	arpReply   = 2
)

// arpFrame is an Ethernet+ARP frame of op from (sha, spa) to (tha, tpa).
func arpFrame(op uint16, ethSrc, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) []byte {
	f := make([]byte, 0, 42)
	f = append(f, tha...)
	f = append(f, ethSrc...)
	f = binary.BigEndian.AppendUint16(f, unix.ETH_P_ARP)
	f = append(f, 0, 1, 8, 0, 6, 4)
	f = binary.BigEndian.AppendUint16(f, op)
	s, d := spa.As4(), tpa.As4()
	f = append(f, sha...)
	f = append(f, s[:]...)
	f = append(f, tha...)
	return append(f, d[:]...)
}

// sendRaw sends frame out of ifName in the namespace at nsPath.
func sendRaw(t *testing.T, nsPath, ifName string, frame []byte) {
	t.Helper()
	err := fabricns.Do(nsPath, func() error {
		ifi, err := net.InterfaceByName(ifName)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6, Addr: [8]byte(append(slices.Clone(frame[:6]), 0, 0))})
	})
	if err != nil {
		t.Fatalf("send raw frame in %s: %v", nsPath, err)
	}
}

// neighMAC is the MAC the namespace's neighbour cache holds for ip on
// ifName ("" if none).
func neighMAC(t *testing.T, nsPath, ifName string, ip netip.Addr) string {
	t.Helper()
	for _, n := range neighbours(t, nsPath, ifName) {
		if n.IP.Equal(ip.AsSlice()) && n.HardwareAddr != nil {
			return n.HardwareAddr.String()
		}
	}
	return ""
}

// TestSpoofedARPDropped: a sandbox announcing a neighbour's address (ARP
// replies to the neighbour and to the host, a gratuitous ARP, and frames
// with the neighbour's MAC as Ethernet source) changes no neighbour cache.
func TestSpoofedARPDropped(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	a := l.bridgeNetwork("neta", "br-sa", "10.92.1.0/24", false)
	att := l.join(a, "att", "vsatt", 2)
	vic := l.join(a, "vic", "vsvic", 3)
	thd := l.join(a, "thd", "vsthd", 4)
	// The caches hold the genuine entries first: unsolicited replies only
	// update existing entries.
	mustPing(t, vic.name, "10.92.1.4")
	mustPing(t, l.hostName, "10.92.1.3")
	mustPing(t, att.name, "10.92.1.3") // the attacker's own ARP works
	thdIP, vicIP, gw := thd.ep.Addr.Addr(), vic.ep.Addr.Addr(), a.Gateway
	brMAC := l.link("br-sa").Attrs().HardwareAddr
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	mac := att.ep.MAC
	frames := [][]byte{
		arpFrame(arpReply, mac, mac, thdIP, vic.ep.MAC, vicIP), // to the neighbour
		arpFrame(arpReply, mac, mac, vicIP, brMAC, gw),         // to the host
		arpFrame(arpRequest, mac, mac, thdIP, bcast, thdIP),    // gratuitous
		// Ethernet source and sender of the third sandbox, its own address.
		arpFrame(arpReply, thd.ep.MAC, thd.ep.MAC, vicIP, brMAC, gw),
	}
	if got := neighMAC(t, vic.path, "eth0", thdIP); got != thd.ep.MAC.String() {
		t.Fatalf("neighbour's entry for %s = %q before, want %s", thdIP, got, thd.ep.MAC)
	}
	// The kernel takes an update only after locktime (1 s) since the last
	// one, so the spoofed frames go on for longer than that.
	netnstest.Never(t, 2500*time.Millisecond, "a neighbour cache took the attacker's announcement", func() bool {
		for _, f := range frames {
			sendRaw(t, att.path, "eth0", f)
		}
		return neighMAC(t, vic.path, "eth0", thdIP) != thd.ep.MAC.String() ||
			neighMAC(t, l.hostPath, "br-sa", vicIP) != vic.ep.MAC.String()
	})
	// Nor did the bridge learn the third sandbox's MAC on the attacker's port.
	mustPing(t, vic.name, "10.92.1.4")
}

var spoofHandleRE = regexp.MustCompile(`"family": "bridge", "name": "fabric", "handle": (\d+)`)

// spoofTableHandle is the kernel's handle of the table bridge fabric; it
// changes whenever the table is rebuilt. "" means there is no table.
func (l *lab) spoofTableHandle() string { return l.handleOf(spoofHandleRE) }

// spoofSet reads the anti-spoofing elements in l's host namespace.
func (l *lab) spoofSet() map[string]spoofElem {
	l.t.Helper()
	c, done := nftIn(l.t, l.hostPath)
	defer done()
	d := &Datapath{nft: c}
	elems, err := d.spoofKernelElems()
	if err != nil {
		l.t.Fatal(err)
	}
	return elems
}

func wantElems(eps ...datapath.Endpoint) map[string]spoofElem {
	out := map[string]spoofElem{}
	for _, ep := range eps {
		out[ep.HostIfName] = spoofElem{port: ep.HostIfName, mac: [6]byte(ep.MAC), addr: ep.Addr.Addr()}
	}
	return out
}

func checkSet(t *testing.T, l *lab, what string, want map[string]spoofElem) {
	t.Helper()
	if got := l.spoofSet(); !maps.Equal(got, want) {
		t.Errorf("%s: anti-spoofing set = %v, want %v", what, got, want)
	}
}

// TestSpoofSetFollowsEndpoints: the set holds exactly the bridge
// endpoints after creates, a changed address, deletes and a restart, and
// Sync prunes an element added by hand and restores a deleted table
// (counted as a repair).
func TestSpoofSetFollowsEndpoints(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	a := l.bridgeNetwork("neta", "br-sa", "10.93.1.0/24", false)
	e1 := l.join(a, "e1", "vse1", 2).ep
	e2 := l.join(a, "e2", "vse2", 3).ep
	j3 := l.join(a, "e3", "vse3", 4)
	e3 := j3.ep
	checkSet(t, l, "three endpoints", wantElems(e1, e2, e3))

	e3 = checkSpoofSetChanges(t, l, a, e1, e2, e3)
	state := datapath.State{Networks: []datapath.Network{a}, Endpoints: []datapath.Endpoint{e1, e3}}
	if err := l.dp.Sync(ctx, state); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	checkSet(t, l, "after Sync", wantElems(e1, e3))

	checkSpoofSetRepairs(t, l, state, e1, e3)
	checkSpoofTableEnforces(t, l, j3.path, e1, e3)
	checkSpoofPurge(t, l)
}

// checkSpoofSetChanges: the set follows a changed address and a delete,
// and a restarted datapath adopts it. It returns e3 with its new address.
func checkSpoofSetChanges(t *testing.T, l *lab, a datapath.Network, e1, e2, e3 datapath.Endpoint) datapath.Endpoint {
	e3.Addr = netip.MustParsePrefix("10.93.1.5/24")
	l.ensureEndpoint(a, e3)
	checkSet(t, l, "e3 moved to .5", wantElems(e1, e2, e3))
	if err := l.dp.DeleteEndpoint(ctx, a, e2); err != nil {
		t.Fatal(err)
	}
	checkSet(t, l, "e2 deleted", wantElems(e1, e3))

	// A restarted datapath adopts the set: its next change is one element.
	if err := l.dp.Close(); err != nil {
		t.Fatal(err)
	}
	l.dp = l.open(Options{})
	if err := l.dp.DeleteEndpoint(ctx, a, e1); err != nil {
		t.Fatal(err)
	}
	checkSet(t, l, "e1 deleted after restart", wantElems(e3))

	return e3
}

// checkSpoofSetRepairs: Sync prunes an element added by hand, restores a
// deleted element, a deleted table and a changed rule, each counted as a
// repair.
func checkSpoofSetRepairs(t *testing.T, l *lab, state datapath.State, e1, e3 datapath.Endpoint) {
	netnstest.Run(t, l.hostName, "nft", "add", "element", "bridge", "fabric", "addrs", "{ vsx . 02:00:00:00:00:01 . 10.93.1.9 }")
	netnstest.Run(t, l.hostName, "nft", "add", "element", "bridge", "fabric", "ports", "{ vsx }")
	netnstest.Run(t, l.hostName, "nft", "delete", "element", "bridge", "fabric", "addrs", "{ vse1 . "+e1.MAC.String()+" . 10.93.1.2 }")
	netnstest.Run(t, l.hostName, "nft", "delete", "element", "bridge", "fabric", "ports", "{ vse1 }")
	before := l.dp.pass.Repairs.Counts()
	if err := l.dp.Sync(ctx, state); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	checkSet(t, l, "hand-made element pruned, deleted one restored", wantElems(e1, e3))
	after := l.dp.pass.Repairs.Counts()
	if after[datapath.RepairStale] != before[datapath.RepairStale]+1 || after[datapath.RepairNFTables] != before[datapath.RepairNFTables]+1 {
		t.Errorf("repairs %v -> %v, want one stale and one nftables more", before, after)
	}

	netnstest.Run(t, l.hostName, "nft", "delete", "table", "bridge", "fabric")
	if err := l.dp.Sync(ctx, state); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	checkSet(t, l, "table deleted by hand, then Sync", wantElems(e1, e3))
	if got := l.dp.pass.Repairs.Counts()[datapath.RepairNFTables]; got != after[datapath.RepairNFTables]+1 {
		t.Errorf("nftables repairs %d after the table was deleted, want %d", got, after[datapath.RepairNFTables]+1)
	}
	// A rule changed by hand (the drop made an accept) is put back too.
	m := regexp.MustCompile(`drop # handle (\d+)`).FindStringSubmatch(netnstest.Run(t, l.hostName, "nft", "-a", "list", "chain", "bridge", "fabric", "endpoint"))
	if m == nil {
		t.Fatal("no drop rule in chain endpoint")
	}
	netnstest.Run(t, l.hostName, "nft", "replace", "rule", "bridge", "fabric", "endpoint", "handle", m[1], "counter", "accept")
	if err := l.dp.Sync(ctx, state); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if got := l.dp.pass.Repairs.Counts()[datapath.RepairNFTables]; got != after[datapath.RepairNFTables]+2 {
		t.Errorf("nftables repairs %d after a rule was changed, want %d", got, after[datapath.RepairNFTables]+2)
	}
}

// checkSpoofTableEnforces: the restored table works: the endpoint in
// sandbox sbPath (e3) may not claim e1's address.
func checkSpoofTableEnforces(t *testing.T, l *lab, sbPath string, e1, e3 datapath.Endpoint) {
	sink := newUDPSink(t, l.hostPath, "10.93.1.1:7004")
	sendUDPFrom(t, sbPath, e1.Addr.Addr(), "10.93.1.1:7004", "spoofed")
	netnstest.Eventually(t, 5*time.Second, "e3's genuine datagram", func() bool {
		sendUDPFrom(t, sbPath, e3.Addr.Addr(), "10.93.1.1:7004", "genuine")
		return sink.has("genuine")
	})
	if sink.has("spoofed") {
		t.Error("the host received e3's datagram with e1's address after the repair")
	}
}

// checkSpoofPurge: Purge (fabricd reset) leaves no table behind.
func checkSpoofPurge(t *testing.T, l *lab) {
	if err := l.dp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := plumb.Purge(l.hostPath); err != nil {
		t.Fatalf("Purge: %v", err)
	}
	if out := netnstest.Run(t, l.hostName, "nft", "list", "tables"); out != "" {
		t.Errorf("tables after Purge: %q", out)
	}
}

// TestSpoofEnsureIsIncremental: adding an endpoint changes the table's
// elements, never rebuilds it (its handle stays), and costs one batch.
func TestSpoofEnsureIsIncremental(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	a := l.bridgeNetwork("neta", "br-sa", "10.94.1.0/24", false)
	eps := []datapath.Endpoint{l.join(a, "e1", "vse1", 2).ep}
	handle := l.spoofTableHandle
	h0 := handle()
	if h0 == "" {
		t.Fatal("no table bridge fabric after the first endpoint")
	}
	for i := range 5 {
		eps = append(eps, l.join(a, fmt.Sprintf("e%d", i+2), fmt.Sprintf("vse%d", i+2), byte(i+3)).ep)
	}
	if h := handle(); h != h0 {
		t.Errorf("table rebuilt by EnsureEndpoint: %q -> %q", h0, h)
	}
	checkSet(t, l, "six endpoints", wantElems(eps...))
}

// TestSpoofedSourceDroppedOverOverlay: a sandbox claiming its neighbour's
// address does not reach a sandbox of its overlay network on another
// host, although that host accepts the neighbour's address from this one.
func TestSpoofedSourceDroppedOverOverlay(t *testing.T) {
	t.Parallel()
	a, b, aIP, bIP := overlayHosts(t, "10.202.1", 0)
	n := overlayNetwork("ovl", "br-so", "10.95.1.0/24", 4343)
	ensureOn(n, a, b)
	att, vic := a.join(n, "att", "vsatt", 2), a.join(n, "vic", "vsvic", 3)
	dst := b.join(n, "dst", "vsdst", 4)
	a.setRemotes(n, remoteOf(dst.ep, bIP))
	b.setRemotes(n, remoteOf(att.ep, aIP), remoteOf(vic.ep, aIP))
	sink := newUDPSink(t, dst.path, "10.95.1.4:7006")
	for range 3 {
		sendUDPFrom(t, att.path, vic.ep.Addr.Addr(), "10.95.1.4:7006", "spoofed")
	}
	netnstest.Eventually(t, 5*time.Second, "genuine datagram over the overlay", func() bool {
		sendUDPFrom(t, att.path, att.ep.Addr.Addr(), "10.95.1.4:7006", "genuine")
		return sink.has("genuine")
	})
	if sink.has("spoofed") {
		t.Error("the remote sandbox received a datagram with the attacker's neighbour's address")
	}
}

// TestSpoofElementWithoutMAC: an endpoint without a MAC is held to the MAC
// its sandbox side got.
func TestSpoofElementWithoutMAC(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	a := l.bridgeNetwork("neta", "br-sa", "10.96.1.0/24", false)
	_, path := l.sandbox()
	ep := endpoint("e1", a, path, "eth0", "vse1", 2, true)
	ep.MAC = nil
	l.ensureEndpoint(a, ep)
	h := netnstest.Handle(t, path)
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	ep.MAC = eth0.Attrs().HardwareAddr
	checkSet(t, l, "endpoint without MAC", wantElems(ep))
}

// TestSpoofSetUpStaysFlat: adding the 1,000th endpoint's elements costs
// about what adding the first did (one small batch each, no rebuild).
func TestSpoofSetUpStaysFlat(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	const total, window = 1000, 100
	took := make([]time.Duration, total)
	var h0 string
	l.dp.mu.Lock()
	for i := range total {
		ep := datapath.Endpoint{ID: fmt.Sprintf("e%d", i), HostIfName: fmt.Sprintf("vsf%d", i),
			Addr: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 97, byte(i >> 8), byte(i)}), 16),
			MAC:  net.HardwareAddr{2, 0x42, 10, 97, byte(i >> 8), byte(i)}}
		t0 := time.Now()
		err := l.dp.spoofEnsure(ep)
		took[i] = time.Since(t0)
		if err != nil {
			l.dp.mu.Unlock()
			t.Fatalf("endpoint %d: %v", i, err)
		}
		if i == 0 {
			h0 = l.spoofTableHandle()
		}
	}
	l.dp.mu.Unlock()
	if h := l.spoofTableHandle(); h != h0 {
		t.Errorf("table rebuilt while adding endpoints: handle %s -> %s", h0, h)
	}
	median := func(d []time.Duration) time.Duration {
		s := slices.Clone(d)
		slices.Sort(s)
		return s[len(s)/2]
	}
	first, last := median(took[:window]), median(took[total-window:])
	t.Logf("median time to add one endpoint's elements: %v for the first %d, %v for the last %d", first, window, last, window)
	if last > 4*first+2*time.Millisecond {
		t.Errorf("adding elements got slower with the set's size: %v -> %v", first, last)
	}
	if got := len(l.spoofSet()); got != total {
		t.Errorf("%d elements, want %d", got, total)
	}
}

// TestSpoofFailedEnsureChangesNothing: an EnsureEndpoint that fails after
// the elements were added (its network's bridge is missing) takes them out
// again.
func TestSpoofFailedEnsureChangesNothing(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	a := l.bridgeNetwork("neta", "br-sa", "10.98.1.0/24", false)
	e1 := l.join(a, "e1", "vse1", 2).ep
	missing := network("netm", "br-sm", "10.98.2.0/24", false)
	_, path := l.sandbox()
	if err := l.dp.EnsureEndpoint(ctx, missing, endpoint("e2", missing, path, "eth0", "vse2", 2, true)); err == nil {
		t.Fatal("EnsureEndpoint on a network without bridge succeeded")
	}
	checkSet(t, l, "after the failed EnsureEndpoint", wantElems(e1))
}

// TestSpoofRebuildManyEndpoints: a table rebuilt with thousands of
// endpoints (a restart's Sync) holds every element: the kernel silently
// cuts an element list longer than one netlink attribute, which would
// leave the last endpoints' traffic dropped as spoofed.
func TestSpoofRebuildManyEndpoints(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	const n = 2000
	elems := make(map[string]spoofElem, n)
	for i := range n {
		port := fmt.Sprintf("fsm%d", i)
		elems[port] = spoofElem{port: port, mac: [6]byte{0x02, 0, 0, 0, byte(i >> 8), byte(i)},
			addr: netip.AddrFrom4([4]byte{10, 95, byte(i >> 8), byte(i)})}
	}
	if err := l.dp.spoofRebuild(elems); err != nil {
		t.Fatal(err)
	}
	got, err := l.dp.spoofKernelElems()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("table bridge fabric holds %d endpoints after a rebuild with %d", len(got), n)
	}
	for port, e := range elems {
		if got[port] != e {
			t.Fatalf("endpoint %s: element %+v, want %+v", port, got[port], e)
		}
	}
}
