//go:build linux

package bpf

import (
	"errors"
	"fmt"
	"maps"
	"runtime"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// TestEnumsHaveNames: every reason, verdict and direction the C code
// defines has a Go name and fits the counter index space, so adding one in
// C without Go (or past REASON_MAX) fails here.
func TestEnumsHaveNames(t *testing.T) {
	spec, err := loadEndpoint()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []struct {
		name  string
		max   uint64
		named func(uint64) bool
	}{
		{"reason", reasonMax, func(v uint64) bool { _, ok := reasonNames[Reason(v)]; return ok }},
		{"verdict", verdictMax, func(v uint64) bool { _, ok := verdictNames[Verdict(v)]; return ok }},
		{"direction", directionMax, func(v uint64) bool { _, ok := directionNames[Direction(v)]; return ok }},
	} {
		var enum *btf.Enum
		if err := spec.Types.TypeByName(e.name, &enum); err != nil {
			t.Fatalf("enum %s: %v", e.name, err)
		}
		for _, v := range enum.Values {
			if v.Value >= e.max {
				t.Errorf("%s %s = %d does not fit the counters (max %d)", e.name, v.Name, v.Value, e.max)
			}
			if !e.named(v.Value) {
				t.Errorf("%s %s = %d has no Go name", e.name, v.Name, v.Value)
			}
		}
	}
}

func TestCounterIndexRoundTrip(t *testing.T) {
	seen := make(map[uint32]bool)
	for d := range Direction(directionMax) {
		for v := range Verdict(verdictMax) {
			for r := range Reason(reasonMax) {
				k := CounterKey{d, v, r}
				idx := k.index()
				if idx >= countersMax || seen[idx] || counterKeyAt(idx) != k {
					t.Fatalf("%v: index %d (seen %v) decodes to %v", k, idx, seen[idx], counterKeyAt(idx))
				}
				seen[idx] = true
			}
		}
	}
}

// TestCountersExact runs known packets on two CPUs and checks the sums.
// Each run counts skb->len, the whole frame from the Ethernet header on.
func TestCountersExact(t *testing.T) {
	o := loadFixture(t)
	if runtime.NumCPU() < 2 {
		t.Skip("skipping: needs 2 CPUs to check per-CPU summing")
	}
	fwd := ipFrom(a1, netA, ipv4Hdr{src: a1.Addr, dst: a2.Addr, proto: protoUDP}, udp(a1.Addr, a2.Addr, 1, 2, make([]byte, 100)))
	cross := ipFrom(a1, netA, ipv4Hdr{src: a1.Addr, dst: b1.Addr, proto: protoUDP}, udp(a1.Addr, b1.Addr, 1, 2, make([]byte, 7)))
	arpReq := arpRequestFrom(a1, netA.Gateway)

	// runOn runs each packet once on the given CPU, from a thread that is
	// pinned there and then dies with its changed affinity.
	runOn := func(cpu int, pkts ...[]byte) {
		errc := make(chan error, 1)
		go func() {
			runtime.LockOSThread()
			var set unix.CPUSet
			set.Set(cpu)
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				errc <- fmt.Errorf("pin to CPU %d: %w", cpu, err)
				return
			}
			for _, pkt := range pkts {
				if _, _, err := run(o.FromEndpoint(), a1.HostIfindex, pkt); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	runOn(0, fwd, fwd, fwd, cross)
	runOn(1, fwd, arpReq)
	// Repeat runs the program that many times on one input.
	if _, err := o.FromEndpoint().Run(&ebpf.RunOptions{Data: cross, Repeat: 50, Context: skbContext{IngressIfindex: uint32(a1.HostIfindex)}}); err != nil {
		t.Fatalf("repeat run: %v", err)
	}

	want := map[CounterKey]Counter{
		{DirFromEndpoint, VerdictRedirect, ReasonForward}:  {4, 4 * uint64(len(fwd))},
		{DirFromEndpoint, VerdictDrop, ReasonCrossNetwork}: {51, 51 * uint64(len(cross))},
		{DirFromEndpoint, VerdictRedirect, ReasonARPReply}: {1, uint64(len(arpReq))},
	}
	if got := readCounters(t, o); !maps.Equal(got, want) {
		t.Errorf("counters %v, want %v", got, want)
	}

	// The forward count really is split over two CPUs.
	var perCPU []endpointCounter
	if err := o.objs.Counters.Lookup(CounterKey{DirFromEndpoint, VerdictRedirect, ReasonForward}.index(), &perCPU); err != nil {
		t.Fatal(err)
	}
	if perCPU[0].Packets != 3 || perCPU[1].Packets != 1 {
		t.Errorf("forward packets per CPU %d, %d; want 3, 1", perCPU[0].Packets, perCPU[1].Packets)
	}
}

func TestShapeCheck(t *testing.T) {
	o := load(t)
	small, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 16, MaxEntries: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer small.Close()
	shaped := &Objects{}
	shaped.objs.Counters = small
	if err := shaped.checkShape(); !errors.Is(err, ErrInvalid) {
		t.Errorf("8-entry counters map: err %v, want ErrInvalid", err)
	}
	if err := o.checkShape(); err != nil {
		t.Errorf("loaded objects: %v", err)
	}
}
