//go:build linux

package bpf

import (
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
)

// TC verdicts as the program returns them (linux/pkt_cls.h).
const (
	tcActOK       = 0
	tcActShot     = 2
	tcActRedirect = 7
)

func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("skipping: loading eBPF programs and BPF_PROG_TEST_RUN need root (CAP_BPF, CAP_NET_ADMIN); run the suite as root")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		tb.Fatalf("remove memlock limit: %v", err)
	}
}

// skbContext is the head of struct __sk_buff, up to the fields a test sets.
// The kernel accepts a prefix and zero-fills the rest. ingress_ifindex is
// free; ifindex would have to name a real device in the test's namespace.
type skbContext struct {
	Len            uint32
	PktType        uint32
	Mark           uint32
	QueueMapping   uint32
	Protocol       uint32
	VlanPresent    uint32
	VlanTci        uint32
	VlanProto      uint32
	Priority       uint32
	IngressIfindex uint32
	Ifindex        uint32
}

// run runs prog once on pkt as if it arrived on ingressIfindex and returns
// the verdict and the packet as the program left it.
func run(prog *ebpf.Program, ingressIfindex int, pkt []byte) (uint32, []byte, error) {
	opts := ebpf.RunOptions{
		Data:    pkt,
		DataOut: make([]byte, len(pkt)+256),
		Context: skbContext{IngressIfindex: uint32(ingressIfindex)},
	}
	ret, err := prog.Run(&opts)
	return ret, opts.DataOut, err
}

// verdictOf is the counter verdict for a tc return code, as in done().
func verdictOf(ret uint32) Verdict {
	switch ret {
	case tcActOK:
		return VerdictPass
	case tcActRedirect:
		return VerdictRedirect
	}
	return VerdictDrop
}

func mustRun(tb testing.TB, prog *ebpf.Program, ingressIfindex int, pkt []byte) (uint32, []byte) {
	tb.Helper()
	ret, out, err := run(prog, ingressIfindex, pkt)
	if err != nil {
		tb.Fatalf("run program on %d-byte packet: %v", len(pkt), err)
	}
	return ret, out
}

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

var (
	ip  = netip.MustParseAddr
	pfx = netip.MustParsePrefix
)

// The fixture: networks A and B, two endpoints on A, one on B, and a
// sandbox "m" on both (one endpoint per network).
var (
	netA = Network{ID: 1, Subnet: pfx("10.1.0.0/24"), Gateway: ip("10.1.0.1"), RouterMAC: mac("02:fa:00:00:00:01")}
	netB = Network{ID: 2, Subnet: pfx("10.2.0.0/24"), Gateway: ip("10.2.0.1"), RouterMAC: mac("02:fa:00:00:00:02")}

	a1 = Endpoint{HostIfindex: 101, Addr: ip("10.1.0.2"), MAC: mac("02:00:0a:01:00:02"), Network: 1}
	a2 = Endpoint{HostIfindex: 102, Addr: ip("10.1.0.3"), MAC: mac("02:00:0a:01:00:03"), Network: 1}
	b1 = Endpoint{HostIfindex: 201, Addr: ip("10.2.0.2"), MAC: mac("02:00:0a:02:00:02"), Network: 2}
	mA = Endpoint{HostIfindex: 103, Addr: ip("10.1.0.4"), MAC: mac("02:00:0a:01:00:04"), Network: 1}
	mB = Endpoint{HostIfindex: 203, Addr: ip("10.2.0.4"), MAC: mac("02:00:0a:02:00:04"), Network: 2}

	broadcast = mac("ff:ff:ff:ff:ff:ff")
	zeroMAC   = mac("00:00:00:00:00:00")
)

func load(tb testing.TB) *Objects {
	tb.Helper()
	requireRoot(tb)
	o, err := Load(nil)
	if err != nil {
		tb.Fatalf("load: %v", err)
	}
	closeAtEnd(tb, "endpoint objects", o)
	return o
}

// closeAtEnd closes c when the test ends; an error is a failure.
func closeAtEnd(tb testing.TB, what string, c io.Closer) {
	tb.Cleanup(func() {
		if err := c.Close(); err != nil {
			tb.Errorf("close %s: %v", what, err)
		}
	})
}

// mustLoadOn loads a second object (LoadUplink, LoadSock, LoadTunnel)
// onto o's maps, closed when the test ends.
func mustLoadOn[T io.Closer](tb testing.TB, o *Objects, what string, load func(*Objects, *ebpf.CollectionOptions) (T, error)) T {
	tb.Helper()
	x, err := load(o, nil)
	if err != nil {
		tb.Fatalf("load %s: %v", what, err)
	}
	closeAtEnd(tb, what, x)
	return x
}

// put puts the networks, then the endpoints, into o.
func put(tb testing.TB, o *Objects, nets []Network, eps ...Endpoint) {
	tb.Helper()
	for _, n := range nets {
		if err := o.PutNetwork(n); err != nil {
			tb.Fatal(err)
		}
	}
	for _, ep := range eps {
		if err := o.PutEndpoint(ep); err != nil {
			tb.Fatal(err)
		}
	}
}

func loadFixture(tb testing.TB) *Objects {
	tb.Helper()
	o := load(tb)
	put(tb, o, []Network{netA, netB}, a1, a2, b1, mA, mB)
	return o
}

func readCounters(tb testing.TB, o *Objects) map[CounterKey]Counter {
	tb.Helper()
	c, err := o.ReadCounters()
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// counterDelta is after minus before, zero cells left out.
func counterDelta(before, after map[CounterKey]Counter) map[CounterKey]Counter {
	d := make(map[CounterKey]Counter)
	for k, a := range after {
		b := before[k]
		if c := (Counter{a.Packets - b.Packets, a.Bytes - b.Bytes}); c != (Counter{}) {
			d[k] = c
		}
	}
	return d
}

// runCounted runs pkt and checks that exactly one counter moved, by one
// packet of len(pkt) bytes, under the verdict the return code implies and
// the wanted reason.
func runCounted(tb testing.TB, o *Objects, ifindex int, pkt []byte, wantRet uint32, wantReason Reason) []byte {
	tb.Helper()
	before := readCounters(tb, o)
	ret, out := mustRun(tb, o.FromEndpoint(), ifindex, pkt)
	delta := counterDelta(before, readCounters(tb, o))
	if ret != wantRet {
		tb.Errorf("verdict %d, want %d (counters moved: %v)", ret, wantRet, delta)
	}
	want := map[CounterKey]Counter{{DirFromEndpoint, verdictOf(wantRet), wantReason}: {1, uint64(len(pkt))}}
	if !maps.Equal(delta, want) {
		tb.Errorf("counters moved by %v, want %v", delta, want)
	}
	return out
}
