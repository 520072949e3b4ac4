package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// fabricPrograms are the names of fabric's eBPF programs (bpf/*.c).
var fabricPrograms = map[string]bool{
	"from_endpoint": true, "from_tunnel": true, "from_uplink": true, "to_uplink": true, "xdp_uplink": true,
	"sock_connect4": true, "sock_sendmsg4": true, "sock_recvmsg4": true, "sock_getpeername4": true, "sock_release": true,
}

// progStat is one program's cumulative statistics.
type progStat struct {
	name    string
	runtime time.Duration
	runs    uint64
}

// sampleProgs reads the run count and run time of every loaded program
// named like one of fabric's. The kernel keeps them only while statistics
// are enabled (BPF_ENABLE_STATS).
func sampleProgs() (map[ebpf.ProgramID]progStat, error) {
	out := map[ebpf.ProgramID]progStat{}
	var id ebpf.ProgramID
	for range 100000 { // bounded: there are never this many programs
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOENT) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("list BPF programs: %w", err)
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // unloaded meanwhile
		}
		info, ierr := p.Info()
		st, serr := p.Stats()
		p.Close()
		if ierr != nil || serr != nil || !fabricPrograms[info.Name] {
			continue
		}
		out[id] = progStat{name: info.Name, runtime: st.Runtime, runs: st.RunCount}
	}
	return out, errors.New("list BPF programs: too many")
}

// progDelta sums, by program name, what ran between two samples.
func progDelta(before, after map[ebpf.ProgramID]progStat) map[string]progStat {
	out := map[string]progStat{}
	for id, a := range after {
		b := before[id] // zero if loaded in between
		if a.runs < b.runs {
			continue
		}
		d := out[a.name]
		d.name = a.name
		d.runs += a.runs - b.runs
		d.runtime += a.runtime - b.runtime
		out[a.name] = d
	}
	return out
}

// withProgCost wraps a measurement: besides its own figures it returns,
// per program that ran, "ns:NAME" (mean run time), "cpu:NAME" (share of
// one CPU over the wall time, in %) and "kruns:NAME" (thousands of runs/s).
func withProgCost(fn func(context.Context, int) (map[string]float64, error)) func(context.Context, int) (map[string]float64, error) {
	return func(ctx context.Context, secs int) (map[string]float64, error) {
		before, err := sampleProgs()
		if err != nil {
			return nil, err
		}
		t0 := time.Now()
		m, err := fn(ctx, secs)
		wall := time.Since(t0)
		if err != nil {
			return m, err
		}
		after, err := sampleProgs()
		if err != nil {
			return m, err
		}
		for name, d := range progDelta(before, after) {
			if d.runs == 0 {
				continue
			}
			m["ns:"+name] = float64(d.runtime.Nanoseconds()) / float64(d.runs)
			m["cpu:"+name] = 100 * d.runtime.Seconds() / wall.Seconds()
			m["kruns:"+name] = float64(d.runs) / wall.Seconds() / 1e3
		}
		return m, nil
	}
}

// sectionBPFCost measures what fabric's eBPF programs cost on the paths of
// the earlier sections, from the kernel's per-program run time statistics.
// (`bpftool prog profile` needs hardware counters, which this VM's CPU
// does not expose to the guest; the run-time statistics need none.)
func (l *Lab) sectionBPFCost(ctx context.Context) error {
	if l.fabricErr != nil {
		fmt.Printf("## bpf-cost\n\nfabric unavailable (%v): nothing measured.\n\n", l.fabricErr)
		return nil
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		fmt.Printf("## bpf-cost\n\nthe kernel does not collect BPF run-time statistics (%v): nothing measured.\n\n", err)
		return nil
	}
	defer stats.Close()
	h1, h2 := l.nsPath("h1"), l.nsPath("h2")
	stream := l.stream // "gbps"
	conns := func(ctx context.Context, secs int) (map[string]float64, error) {
		r, err := l.wrk(ctx, h2, fmt.Sprintf("http://%s:%d/", h1IP, hpFabHTTP), secs)
		if err != nil {
			return nil, err
		}
		return map[string]float64{"cps": r.rps}, nil
	}
	specs := []spec{
		{name: "same-host fa → fb, one TCP stream (Gbit/s)", fn: withProgCost(stream(l.faNS, l.fbIP, portPerf))},
		{name: fmt.Sprintf("published h2 → h1:%d, one TCP stream (Gbit/s)", hpFabric), fn: withProgCost(stream(h2, h1IP, hpFabric))},
		{name: fmt.Sprintf("published h1 → 127.0.0.1:%d (Gbit/s)", hpFabric), fn: withProgCost(stream(h1, "127.0.0.1", hpFabric))},
		{name: fmt.Sprintf("new connections h2 → h1:%d (conn/s)", hpFabHTTP), fn: withProgCost(conns)},
	}
	res := runAlternating(ctx, "bpf-cost", l.secs(), l.o.reps, specs)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	printBPFCost(l.secs(), l.o.reps, res)
	return nil
}

func printBPFCost(secs, reps int, res []*result) {
	fmt.Printf("## bpf-cost: run time of fabric's eBPF programs on each path (kernel BPF statistics), %d s, median of %d\n\n", secs, reps)
	fmt.Println("| path | rate | program | runs/s (thousands) | ns per run | % of one CPU |")
	fmt.Println("| --- | --: | --- | --: | --: | --: |")
	med := func(xs []float64) string {
		v := percentile(xs, 50)
		if math.IsNaN(v) {
			return "–"
		}
		if v >= 100 {
			return fmt.Sprintf("%.0f", v)
		}
		return fmt.Sprintf("%.2f", v)
	}
	for _, r := range res {
		rateVals := r.vals["gbps"]
		if len(rateVals) == 0 {
			rateVals = r.vals["cps"]
		}
		var progs []string
		for k := range r.vals {
			if name, ok := strings.CutPrefix(k, "ns:"); ok {
				progs = append(progs, name)
			}
		}
		sort.Strings(progs)
		if len(progs) == 0 {
			why := "no fabric program ran"
			if len(r.errs) > 0 {
				why = strings.Join(r.errs, "; ")
			}
			fmt.Printf("| %s | %s | – | – | – | %s |\n", r.name, med(rateVals), why)
			continue
		}
		for i, p := range progs {
			name, rate := "", ""
			if i == 0 {
				name, rate = r.name, med(rateVals)
			}
			fmt.Printf("| %s | %s | %s | %s | %s | %s |\n", name, rate, p, med(r.vals["kruns:"+p]), med(r.vals["ns:"+p]), med(r.vals["cpu:"+p]))
		}
	}
	fmt.Println()
	fmt.Println("- statistics collection itself adds two clock reads per run; the rates here are a little below the other sections'.")
	fmt.Println("- a run handles one skb: with GSO/GRO a TCP stream's skb carries up to 64 KiB, so runs/s is far below packets/s on the wire.")
	fmt.Println()
}
