package main

import (
	"bufio"
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
