package main

import (
	"fmt"
	"math"
	"sort"
)

// repRatios pairs the per-repetition figures of the big and the small N
// (measured in the same repetition) and returns big/small of each pair
// that has both; a repetition that failed on either side is left out
// rather than paired with another repetition's figure.
func repRatios(small, big []float64) []float64 {
	var out []float64
	for i := range min(len(small), len(big)) {
		s, b := small[i], big[i]
		if math.IsNaN(s) || math.IsNaN(b) || s <= 0 || b <= 0 {
			continue
		}
		out = append(out, b/s)
	}
	return out
}

// ratioSpread is the median of per-repetition ratios with their range.
type ratioSpread struct {
	med, lo, hi float64
	n           int
}

func spreadOf(ratios []float64) ratioSpread {
	if len(ratios) == 0 {
		return ratioSpread{med: math.NaN(), lo: math.NaN(), hi: math.NaN()}
	}
	s := append([]float64(nil), ratios...)
	sort.Float64s(s)
	return ratioSpread{med: median(s), lo: s[0], hi: s[len(s)-1], n: len(s)}
}

// String is "1.03× (0.98–1.10, 3 reps)", or "–" without a ratio.
func (r ratioSpread) String() string {
	if r.n == 0 {
		return "–"
	}
	if r.n == 1 {
		return fmt.Sprintf("%.2f× (1 rep)", r.med)
	}
	return fmt.Sprintf("%.2f× (%.2f–%.2f, %d reps)", r.med, r.lo, r.hi, r.n)
}

// shrinkCount is how many of the fillers to remove so that a host with
// have sandboxes gets back to want: never more than there are fillers.
func shrinkCount(have, want, fillers int) int {
	return max(0, min(have-want, fillers))
}
