package cluster

import (
	"fmt"
	"testing"
	"time"
)

// TestMeasureConvergence keeps MeasureConvergence exercised at a size the
// test machine handles; `make bench` runs BenchmarkConvergence for more.
func TestMeasureConvergence(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 20 members")
	}
	full, failure, err := MeasureConvergence(20)
	if err != nil {
		t.Fatal(err)
	}
	// How fast is for `make bench`; here only that both happen (within
	// MeasureConvergence's own bounded wait) and are measured.
	if full <= 0 || failure <= 0 {
		t.Fatalf("full view %v, failure %v: not measured", full, failure)
	}
	t.Logf("n=20: full view %s, failure seen by all %s", full.Round(time.Millisecond), failure.Round(time.Millisecond))
}

// BenchmarkConvergence reports membership convergence for 50, 100 and 200
// in-process members (one measurement each; run with -benchtime=1x and
// -count for repetitions).
func BenchmarkConvergence(b *testing.B) {
	for _, n := range []int{50, 100, 200} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			for range b.N {
				full, failure, err := MeasureConvergence(n)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(full.Seconds(), "fullview-s")
				b.ReportMetric(failure.Seconds(), "failure-s")
			}
		})
	}
}
