package main

import (
	"bufio"
	"math"
	"strings"
	"testing"
)

func TestParseMetrics(t *testing.T) {
	in := `# HELP go_goroutines Number of goroutines.
# TYPE go_goroutines gauge
go_goroutines 17
go_threads 9
go_memstats_heap_inuse_bytes 1.2582912e+07
fabric_api_requests_total{method="GET",route="/v1/status",code="200"} 3
process_resident_memory_bytes 4.5e+07
`
	got, err := parseMetrics(bufio.NewScanner(strings.NewReader(in)))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"go_goroutines": 17, "go_threads": 9, "go_memstats_heap_inuse_bytes": 12582912, "process_resident_memory_bytes": 4.5e7}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}

func TestRepRatios(t *testing.T) {
	nan := math.NaN()
	for _, tc := range []struct {
		name       string
		small, big []float64
		want       []float64
	}{
		{"paired by repetition", []float64{10, 8, 5}, []float64{11, 8, 10}, []float64{1.1, 1, 2}},
		{"failed repetition left out, not shifted", []float64{10, nan, 5}, []float64{12, 9, 5}, []float64{1.2, 1}},
		{"zero is no measurement", []float64{0, 4}, []float64{3, 6}, []float64{1.5}},
		{"unequal lengths: only complete pairs", []float64{2, 4, 8}, []float64{4}, []float64{2}},
		{"nothing", nil, []float64{1}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := repRatios(tc.small, tc.big)
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for i := range got {
				if math.Abs(got[i]-tc.want[i]) > 1e-9 {
					t.Errorf("ratio %d = %v, want %v", i, got[i], tc.want[i])
				}
			}
		})
	}
}

func TestSpreadOf(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ratios []float64
		want   string
	}{
		// The median of the ratios, not the ratio of medians: with these
		// p50s (small 10, 5, 20; big 11, 12, 21) the medians would give
		// 12/10 = 1.20×.
		{"median of per-repetition ratios", repRatios([]float64{10, 5, 20}, []float64{11, 12, 21}), "1.10× (1.05–2.40, 3 reps)"},
		{"even count averages the middle two", []float64{1.4, 1.0, 1.2, 1.1}, "1.15× (1.00–1.40, 4 reps)"},
		{"one repetition", []float64{1.07}, "1.07× (1 rep)"},
		{"none", nil, "–"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := spreadOf(tc.ratios).String(); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestShrinkCount(t *testing.T) {
	for _, tc := range []struct {
		have, want, fillers, remove int
	}{
		{1000, 10, 995, 990},
		{1000, 10, 500, 500}, // the rest are not the section's to remove
		{10, 10, 5, 0},
		{8, 10, 3, 0},
	} {
		if got := shrinkCount(tc.have, tc.want, tc.fillers); got != tc.remove {
			t.Errorf("shrinkCount(%d, %d, %d) = %d, want %d", tc.have, tc.want, tc.fillers, got, tc.remove)
		}
	}
}
