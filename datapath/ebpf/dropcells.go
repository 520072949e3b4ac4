package ebpf

import (
	"github.com/fabricnet/fabric/bpf"
	"github.com/fabricnet/fabric/datapath"
)

// dropCells are the (direction, reason) pairs in which the programs drop
// packets (from endpoint.c, tunnel.c and uplink.c). Metrics reports each
// from the start, at zero until the first drop, so that an alert on
// increase() or rate() sees the first drop of a kind too.
var dropCells = func() []bpf.CounterKey {
	var out []bpf.CounterKey
	add := func(d bpf.Direction, reasons ...bpf.Reason) {
		for _, r := range reasons {
			out = append(out, bpf.CounterKey{Direction: d, Verdict: bpf.VerdictDrop, Reason: r})
		}
	}
	add(bpf.DirFromEndpoint, bpf.ReasonNoEndpoint, bpf.ReasonNoNetwork, bpf.ReasonMalformed, bpf.ReasonSpoofedMAC,
		bpf.ReasonSpoofedIP, bpf.ReasonCrossNetwork, bpf.ReasonUnsupportedL3, bpf.ReasonVLAN, bpf.ReasonCTFull,
		bpf.ReasonInternal, bpf.ReasonNoRemote, bpf.ReasonNoTunnel)
	add(bpf.DirFromTunnel, bpf.ReasonMalformed, bpf.ReasonNoNetwork, bpf.ReasonNoOwner, bpf.ReasonNoTunnel,
		bpf.ReasonSpoofedIP, bpf.ReasonUnsupportedL3, bpf.ReasonVLAN, bpf.ReasonWrongVNI)
	uplink := []bpf.Reason{bpf.ReasonCTFull, bpf.ReasonFragment, bpf.ReasonInternal, bpf.ReasonMalformed,
		bpf.ReasonNATExhausted, bpf.ReasonNATUnsupported, bpf.ReasonNoNetwork, bpf.ReasonNoOwner}
	add(bpf.DirFromUplink, uplink...)
	add(bpf.DirToUplink, uplink...)
	return out
}()

// withDropCells adds a zero counter for every drop cell counters lacks.
func withDropCells(counters []datapath.Counter) []datapath.Counter {
	type cell struct{ d, v, r string }
	have := make(map[cell]bool, len(counters))
	for _, c := range counters {
		have[cell{c.Direction, c.Verdict, c.Reason}] = true
	}
	for _, k := range dropCells {
		c := cell{k.Direction.String(), k.Verdict.String(), k.Reason.String()}
		if !have[c] {
			counters = append(counters, datapath.Counter{Direction: c.d, Verdict: c.v, Reason: c.r})
		}
	}
	return counters
}
