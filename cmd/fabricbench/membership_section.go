package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"strings"
)

// The cluster sizes of the membership section (-membership-n); the
// targets apply at 200 and 1,000 members.
const (
	defaultMembershipN = "50,200,1000"
	quickMembershipN   = "50,200"
)

// membershipTargets are the limits of issue 20 (full view, failure seen
// by all, seconds) by cluster size.
var membershipTargets = map[int][2]float64{200: {3, 8}, 1000: {5, 10}}

// setupFor builds the lab unless the chosen sections need none (the
// membership section runs in this process only).
func (l *Lab) setupFor(ctx context.Context) error {
	for s := range l.o.only {
		if s != "membership" {
			return l.setup(ctx)
		}
	}
	return nil
}

// sectionMembership runs measureConvergence in this process for each size
// of -membership-n, -reps times each in rotation (it is CPU-bound, so the
// median of several runs, not one, is the figure). Nothing else of the
// benchmark runs meanwhile.
func (l *Lab) sectionMembership(ctx context.Context) error {
	var rows []*result
	for _, n := range l.o.membersN {
		rows = append(rows, &result{spec: spec{name: fmt.Sprintf("%d members", n)}, vals: map[string][]float64{}})
	}
	var loads []string
	for rep := 0; rep < max(1, l.o.reps); rep++ {
		for i, n := range l.o.membersN {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r := rows[i]
			load := loadAverage()
			fmt.Fprintf(os.Stderr, "  membership: %d in-process members (run %d), load average %s\n", n, rep+1, load)
			loads = append(loads, load)
			r.runs++
			conv, err := measureConvergence(n)
			r.addConvergence(conv)
			if err != nil {
				fmt.Fprintf(os.Stderr, "  membership: %d members: %v\n", n, err)
				r.errs = append(r.errs, oneLine(err.Error(), 300))
			}
		}
	}
	check := func(k string, which int) func(*result) string {
		return func(r *result) string {
			var n int
			fmt.Sscanf(r.name, "%d", &n)
			lim, ok := membershipTargets[n]
			if !ok {
				return "–"
			}
			v := r.med(k)
			if math.IsNaN(v) {
				return "not measured"
			}
			return fmt.Sprintf("≤ %.0f s: %s", lim[which], metCell(v <= lim[which]))
		}
	}
	printTable("membership convergence: in-process gossip members on 127.0.0.1, median of "+fmt.Sprint(max(1, l.o.reps))+" runs",
		[]column{
			valCol("full view s", "full", "%.2f"),
			valCol("last wave s", "wave", "%.2f"),
			valCol("CPU s to full view", "cpu", "%.1f"),
			valCol("failure seen by all s", "fail", "%.2f"),
			valCol("joined", "joined", "%.0f"),
			valCol("largest full view", "reached", "%.0f"),
			valCol("CPU ms per member joined", "cpuper", "%.0f"),
			valCol("datagrams received per member joined", "pktper", "%.0f"),
			valCol("KiB received per member joined", "kbper", "%.0f"),
			{"full view target", check("full", 0)},
			{"failure target", check("fail", 1)},
			valCol("KiB per member", "mem", "%.0f"),
			valCol("goroutines per member", "gor", "%.1f"),
		}, rows,
		"each member runs the cluster package's production configuration (encrypted gossip, an identity key each); its events are read as the agent reads them.",
		fmt.Sprintf("members join %d at a time, each through up to %d members already joined, retrying as the agent does; above %d members they join in waves of %d, each once the members before it see each other.",
			membershipJoiners, membershipSeeds, membershipWave, membershipWave),
		"full view: from the first join until every member sees all n alive; last wave: the same from the first join of the last wave (the whole run below the wave size); failure: from crashing one member (no leave) until every other has dropped it.",
		"CPU s to full view: CPU time (user + system) the process used from the first join to the full view: the cost of the run, less tied to the machine's other load than the times, though a starved run costs more (probes time out, false suspicions spread).",
		"joined: members joined by full view, or when the run gave up; largest full view: the most members (a whole number of waves) that all saw each other; CPU ms, datagrams and KiB received per member joined: the process's CPU time and all members' received gossip datagrams (each carrying one or several memberlist messages) from the first join until then, divided by the members joined. In one process every member's share adds up; on real hosts (one member each) a host pays about its own share: the gossip a join causes grows with n per member, so the in-process total grows with n².",
		"KiB per member: live Go heap and stacks (after a collection) at full view, or when a run gave up, divided by n (each member holds the state of all it knows).",
		"targets: full view ≤ 3 s and failure ≤ 8 s at 200 members, ≤ 5 s and ≤ 10 s at 1,000; memberlist's LAN defaults (reference): full view 5.6 s, failure seen by all 11.5 s at 200.",
		"all members share this machine's CPUs: large n measures the scheduler too. Load average (1, 5, 15 min) before each run: "+strings.Join(loads, "; ")+".")
	return nil
}

// addConvergence records what one membership run measured, as far as it
// got (a run that gave up still has its joins and costs).
func (r *result) addConvergence(conv convergence) {
	if conv.fullView > 0 {
		r.vals["full"] = append(r.vals["full"], conv.fullView.Seconds())
		r.vals["wave"] = append(r.vals["wave"], conv.lastWave.Seconds())
		r.vals["cpu"] = append(r.vals["cpu"], conv.cpu.Seconds())
	}
	if conv.memPerMember > 0 {
		r.vals["mem"] = append(r.vals["mem"], conv.memPerMember/1024)
		r.vals["gor"] = append(r.vals["gor"], conv.goroutines)
	}
	if conv.joined > 1 {
		r.vals["cpuper"] = append(r.vals["cpuper"], 1000*conv.joinCPU.Seconds()/float64(conv.joined))
		r.vals["pktper"] = append(r.vals["pktper"], float64(conv.packetsIn)/float64(conv.joined))
		r.vals["kbper"] = append(r.vals["kbper"], float64(conv.bytesIn)/1024/float64(conv.joined))
		r.vals["joined"] = append(r.vals["joined"], float64(conv.joined))
		r.vals["reached"] = append(r.vals["reached"], float64(conv.reached.members))
	}
	if conv.failureSeen > 0 {
		r.vals["fail"] = append(r.vals["fail"], conv.failureSeen.Seconds())
	}
}
