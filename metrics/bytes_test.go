package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Cells that count events without a length (the socket hooks) have no
// bytes series; cells at zero have both, so that they exist from the start.
func TestNoBytesForLengthlessEvents(t *testing.T) {
	src := DatapathSourceFunc(func() (DatapathSnapshot, error) {
		return DatapathSnapshot{Counters: []DatapathCounter{
			{Direction: "socket", Verdict: "pass", Reason: "sock-rewrite", Packets: 5},
			{Direction: "from-endpoint", Verdict: "drop", Reason: "spoofed-ip"},
			{Direction: "from-endpoint", Verdict: "redirect", Reason: "forward", Packets: 2, Bytes: 120},
		}}, nil
	})
	reg := prometheus.NewRegistry()
	reg.MustRegister(newDatapathCollector(src))
	fams := gather(t, reg.Gather)
	bytes := map[string]bool{}
	for _, mf := range fams {
		if mf.GetName() != "fabric_datapath_bytes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" {
					bytes[l.GetValue()] = true
				}
			}
		}
	}
	if bytes["sock-rewrite"] {
		t.Error("socket hook cell has a bytes series (always 0)")
	}
	if !bytes["spoofed-ip"] || !bytes["forward"] {
		t.Errorf("bytes series: %v, want spoofed-ip (zero) and forward", bytes)
	}
	if got := value(t, reg, "fabric_datapath_packets_total", map[string]string{"reason": "sock-rewrite"}); got != 5 {
		t.Errorf("socket hook packets = %v, want 5", got)
	}
}
