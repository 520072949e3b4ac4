package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
)

// spec is one row of a section: a path and how to measure it once.
type spec struct {
	name string
	skip string // non-empty: not measured, shown as this (e.g. "fabric unavailable")
	// fn measures once for secs seconds.
	fn func(ctx context.Context, secs int) (map[string]float64, error)
}

// result collects a row's samples over the repetitions.
type result struct {
	spec
	vals map[string][]float64
	errs []string
	runs int
}

// runAlternating measures every row once per repetition, in order: rep 1 of
// rows A, B, C, then rep 2 of A, B, C, … so that slow drifts of the machine
// hit every row alike. Each row first gets a 1 s warm-up that is not
// counted (first connections, ARP, conntrack, page cache of the tools).
func runAlternating(ctx context.Context, section string, secs, reps int, specs []spec) []*result {
	res := make([]*result, len(specs))
	for i, s := range specs {
		res[i] = &result{spec: s, vals: map[string][]float64{}}
	}
	for _, r := range res {
		if r.skip != "" || ctx.Err() != nil {
			continue
		}
		fmt.Fprintf(os.Stderr, "  %s: warm-up: %s\n", section, r.name)
		_, _ = r.fn(ctx, 1)
	}
	for rep := 1; rep <= reps; rep++ {
		for _, r := range res {
			if r.skip != "" || ctx.Err() != nil {
				continue
			}
			fmt.Fprintf(os.Stderr, "  %s: rep %d/%d: %s\n", section, rep, reps, r.name)
			r.runs++
			// A row may measure several things; keep what it got even
			// when a later part failed.
			m, err := r.fn(ctx, secs)
			for k, v := range m {
				r.vals[k] = append(r.vals[k], v)
			}
			if err != nil && ctx.Err() == nil {
				r.errs = append(r.errs, err.Error())
				fmt.Fprintf(os.Stderr, "    failed: %v\n", err)
			}
		}
	}
	return res
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// percentile is the nearest-rank percentile (p in 0..100) of xs.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	if rank < 1 {
		rank = 1
	}
	if rank > len(s) {
		rank = len(s)
	}
	return s[rank-1]
}

// med returns the median of metric k, or NaN when nothing was measured.
func (r *result) med(k string) float64 {
	if r == nil {
		return math.NaN()
	}
	return median(r.vals[k])
}

// column is one column of a section table.
type column struct {
	head string
	cell func(r *result) string
}

// valCol shows the median of metric k with format f.
func valCol(head, k, f string) column {
	return column{head, func(r *result) string {
		if r.skip != "" {
			return "n/a"
		}
		v := r.med(k)
		if math.IsNaN(v) {
			return "failed"
		}
		return fmt.Sprintf(f, v)
	}}
}

// rangeCol shows the spread (min–max) of metric k over the repetitions.
func rangeCol(head, k, f string) column {
	return column{head, func(r *result) string {
		v := r.vals[k]
		if len(v) < 2 {
			return "–"
		}
		s := append([]float64(nil), v...)
		sort.Float64s(s)
		return fmt.Sprintf(f+"–"+f, s[0], s[len(s)-1])
	}}
}

// ratioCol shows metric k of the row divided by metric k of ref.
func ratioCol(head, k string, ref *result) column {
	return column{head, func(r *result) string {
		a, b := r.med(k), ref.med(k)
		if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
			return "–"
		}
		if r == ref {
			return "1.00× (ref)"
		}
		return fmt.Sprintf("%.2f×", a/b)
	}}
}

// printTable prints a markdown table, then notes for failed or partial rows.
func printTable(title string, cols []column, rows []*result, notes ...string) {
	fmt.Printf("## %s\n\n", title)
	heads := []string{"path"}
	for _, c := range cols {
		heads = append(heads, c.head)
	}
	cells := [][]string{heads}
	for _, r := range rows {
		line := []string{r.name}
		for _, c := range cols {
			line = append(line, c.cell(r))
		}
		cells = append(cells, line)
	}
	widths := make([]int, len(heads))
	for _, line := range cells {
		for i, c := range line {
			if n := len([]rune(c)); n > widths[i] {
				widths[i] = n
			}
		}
	}
	printLine := func(line []string) {
		var b strings.Builder
		b.WriteString("|")
		for i, c := range line {
			pad := widths[i] - len([]rune(c))
			if i == 0 {
				b.WriteString(" " + c + strings.Repeat(" ", pad) + " |")
			} else {
				b.WriteString(" " + strings.Repeat(" ", pad) + c + " |")
			}
		}
		fmt.Println(b.String())
	}
	printLine(cells[0])
	sep := make([]string, len(heads))
	for i := range sep {
		if i == 0 {
			sep[i] = strings.Repeat("-", widths[i])
		} else {
			sep[i] = strings.Repeat("-", widths[i]-1) + ":"
		}
	}
	printLine(sep)
	for _, line := range cells[1:] {
		printLine(line)
	}
	fmt.Println()
	for _, r := range rows {
		switch {
		case r.skip != "":
			notes = append(notes, fmt.Sprintf("%s: not measured (%s)", r.name, r.skip))
		case len(r.errs) > 0:
			notes = append(notes, fmt.Sprintf("%s: %d of %d runs failed; last error: %s", r.name, len(r.errs), r.runs, r.errs[len(r.errs)-1]))
		}
	}
	for _, n := range notes {
		fmt.Printf("- %s\n", n)
	}
	if len(notes) > 0 {
		fmt.Println()
	}
}
