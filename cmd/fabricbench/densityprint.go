package main

import (
	"fmt"
	"math"
)

// printDensity prints the table: per-sandbox figures are the growth from
// the same agent's smallest N, divided by the sandboxes added; the ratio
// of the largest N to the smallest is the median of the per-repetition
// ratios.
func (l *Lab) printDensity(hosts []*densityHost, rows map[*densityHost]*densityRows, reps int) {
	var all []*result
	refOf := map[*result]*result{}      // row → the row it is compared with
	spread := map[*result]ratioSpread{} // big rows: per-repetition ratios
	for _, h := range hosts {
		dr := rows[h]
		all = append(all, dr.small)
		refOf[dr.small] = dr.small
		for _, r := range dr.mid {
			all = append(all, r)
			refOf[r] = dr.small
		}
		if dr.big != nil {
			all = append(all, dr.big)
			refOf[dr.big] = dr.small
			spread[dr.big] = spreadOf(repRatios(dr.small.vals["su50"], dr.big.vals["su50"]))
		}
		all = append(all, dr.refSmall)
		refOf[dr.refSmall] = dr.refSmall
		if dr.refBig != nil {
			all = append(all, dr.refBig)
			refOf[dr.refBig] = dr.refSmall
			spread[dr.refBig] = spreadOf(repRatios(dr.refSmall.vals["su50"], dr.refBig.vals["su50"]))
		}
	}
	one := func(head, k, f string, scale float64) column {
		return column{head, func(r *result) string {
			if v := r.med(k); !math.IsNaN(v) {
				return fmt.Sprintf(f, v/scale)
			}
			if r.skip != "" {
				return "n/a"
			}
			return "–"
		}}
	}
	perSandbox := func(head, k string) column {
		return column{head, func(r *result) string {
			ref := refOf[r]
			if ref == nil || ref == r {
				return "–"
			}
			d := r.med("n") - ref.med("n")
			v := (r.med(k) - ref.med(k)) / d / 1024
			if math.IsNaN(v) || d <= 0 {
				return "–"
			}
			return fmt.Sprintf("%.1f", v)
		}}
	}
	small := l.o.densityN[0]
	ratio := column{fmt.Sprintf("p50 × N=%d", small), func(r *result) string {
		if s, ok := spread[r]; ok {
			return s.String()
		}
		return ratioCol("", "su50", refOf[r]).cell(r) // the sizes between: once
	}}
	notes := l.densityNotes(reps)
	for _, h := range hosts {
		notes = append(notes, densityTargets(rows[h], spread)...)
	}
	printTable("density: one agent's cost per sandbox with a command, N sandboxes on one host",
		[]column{
			one("sandboxes", "n", "%.0f", 1),
			one("RSS MiB", "rss", "%.1f", 1<<20),
			perSandbox("RSS KiB/sandbox", "rss"),
			one("heap MiB", "heap", "%.1f", 1<<20),
			perSandbox("heap KiB/sandbox", "heap"),
			one("stack MiB", "stack", "%.2f", 1<<20),
			one("goroutines", "goroutines", "%.0f", 1),
			one("OS threads", "threads", "%.0f", 1),
			one("set-up p50 ms", "su50", "%.1f", 1),
			one("set-up p99 ms", "su99", "%.1f", 1),
			ratio,
			one("remove p50 ms", "rm50", "%.1f", 1),
		}, all, notes...)
}

func (l *Lab) densityNotes(reps int) []string {
	sizes := l.o.densityN
	small, big := sizes[0], sizes[len(sizes)-1]
	return []string{
		"N: the agent's sandboxes, each running `sleep 3600` (supervised, with its own resolver on 127.0.0.11); the h1 agent also has the lab's own sandboxes. Both agents are grown in parallel (a host with both), then measured one after the other.",
		fmt.Sprintf("order: %d repetitions of N=%d then N=%d (grow, measure, shrink back by removing the newest fillers); the sizes between are measured once, on the first way up. Figures are medians over the repetitions.", reps, small, big),
		"RSS and threads from /proc/PID/status; heap (in use), stack (in use) and goroutines from the agent's /metrics. Per-sandbox columns: growth since the same agent's smallest N, divided by the sandboxes added.",
		fmt.Sprintf("set-up: %d API CreateSandbox calls with a command per repetition, from the call to the address answering ping from the host, each removed again; p50/p99 per repetition. p50 × N=%d at N=%d: the median of the per-repetition ratios (N=%d and N=%d of the same repetition), with their range.", densitySetupN, small, big, small, big),
		"remove p50: API RemoveSandbox of the fillers (command running) when shrinking back after that N.",
		"kernel steps, no fabric: in the same host namespace, right next to fabric's creates (alternating one for one): a named namespace (loopback up), a veth pair made with one end in it, addresses, links up, a wait until both ends are operationally up; on k1 the host end is a port of the reference's own bridge (which holds one other port, so it keeps its carrier), on h1 a /30 point-to-point; ready when ping from the host namespace answers; removed by deleting the namespace (not timed). What the host's kernel grows by itself with N namespaces and interfaces is in it; NOT in it: fabric's API, store, IPAM, DNS, command start, nftables rules, eBPF programs and clsact qdiscs, IPv6 turned off on the host end, and the growth of fabric's own bridge with its N ports (the reference's bridge has two). Context, not the target.",
	}
}

// densityTargets are the target lines for one host: fabric's own
// figures; the reference's ratio beside, as context.
func densityTargets(dr *densityRows, spread map[*result]ratioSpread) []string {
	r, ref := dr.big, dr.small
	if r == nil || r.skip != "" {
		return nil
	}
	rss := (r.med("rss") - ref.med("rss")) / (r.med("n") - ref.med("n")) / 1024
	s := spread[r]
	line := fmt.Sprintf("issue targets, %s: %s; %s; %s", r.name,
		target("RSS per sandbox", rss, 20, false, " KiB"),
		target("OS threads", r.med("threads"), 32, false, ""),
		target("set-up p50 vs smallest N (median of per-repetition ratios)", s.med, 1.05, false, "×"))
	if s.n > 0 {
		line += fmt.Sprintf(" [range %.2f–%.2f over %d reps]", s.lo, s.hi, s.n)
	}
	if dr.refBig != nil {
		line += fmt.Sprintf("; the kernel steps alone grew %s (context, not the target)", spread[dr.refBig])
	}
	return []string{line + "."}
}
