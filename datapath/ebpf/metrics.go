package ebpf

import (
	"github.com/fabricnet/fabric/datapath"
)

// Metrics reads the programs' per-CPU counters (summed over CPUs) and the
// attachment counts, at the moment of the call.
func (f *Forwarder) Metrics() (datapath.Metrics, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.objs == nil {
		return datapath.Metrics{}, nil
	}
	counters, err := f.objs.ReadCounters()
	if err != nil {
		return datapath.Metrics{}, err
	}
	m := datapath.Metrics{Programs: map[string]int{modeClsact + "-ingress": len(f.eps)}, Repairs: f.repairs.Counts()}
	for k, c := range counters {
		if c.Packets == 0 && c.Bytes == 0 {
			continue
		}
		m.Counters = append(m.Counters, datapath.Counter{
			Direction: k.Direction.String(), Verdict: k.Verdict.String(), Reason: k.Reason.String(),
			Packets: c.Packets, Bytes: c.Bytes,
		})
	}
	if f.cgroup != "" {
		m.Programs["cgroup-sock"] = 5
	}
	if err := f.addRedirMetrics(&m); err != nil {
		return m, err
	}
	m.Counters = withDropCells(m.Counters)
	f.addUplinkMetrics(&m)
	if f.hostCfg.TunnelIfindex != 0 {
		m.Programs[f.tcHook()+"-tunnel"] = 1
	}
	return m, nil
}
