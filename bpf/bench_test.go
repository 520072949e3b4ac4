//go:build linux

package bpf

import (
	"testing"

	"github.com/cilium/ebpf"
)

// The programs' per-packet cost on the paths the trust checks touch,
// through BPF_PROG_TEST_RUN with many repeats per call (so the syscall is
// amortised). Compare runs of one build against another on one machine.
//
//	go test -run '^$' -bench . -benchtime 20x ./bpf/

const benchRepeat = 20000

func benchRun(b *testing.B, prog *ebpf.Program, ifindex int, pkt []byte, want uint32) {
	b.Helper()
	opts := ebpf.RunOptions{Data: pkt, Repeat: benchRepeat}
	if ifindex != 0 {
		opts.Context = skbContext{IngressIfindex: uint32(ifindex)}
	}
	b.ResetTimer()
	for range b.N {
		ret, err := prog.Run(&opts)
		if err != nil || ret != want {
			b.Fatalf("ret %d, err %v, want %d", ret, err, want)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchRepeat), "ns/pkt")
}

func benchLab(b *testing.B) *natLab {
	l := loadNAT(b)
	err := l.o.SetPolicy(Policy{GuardTCP: []uint16{7946, 9475}, GuardUDP: []uint16{7946, 4789}, TunnelPort: 4789, CTPendingMax: 2048})
	if err != nil {
		b.Fatal(err)
	}
	return l
}

// BenchmarkFromEndpointToHost: the path the host-port guard is on (a
// sandbox's egress and its traffic to the host; the packet is not changed,
// so every repeat takes the same path). Same-host forwarding and NAT
// rewrite the packet, so repeats would not; the guard is not on them.
func BenchmarkFromEndpointToHost(b *testing.B) {
	for _, c := range []struct {
		name string
		f    flow
	}{
		{"egress-tcp", flow{proto: protoTCP, src: a1.Addr, sport: 40000, dst: outside, dport: 443, tcpFlags: tcpFlagACK, payload: make([]byte, 1400)}},
		{"dns-to-gateway", flow{proto: protoUDP, src: a1.Addr, sport: 40000, dst: netA.Gateway, dport: 53, payload: make([]byte, 40)}},
	} {
		b.Run(c.name, func(b *testing.B) {
			l := benchLab(b)
			benchRun(b, l.o.FromEndpoint(), a1.HostIfindex, fromSandbox(a1, c.f), tcActOK)
		})
	}
}
