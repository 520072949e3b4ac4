package main

import (
	"errors"
	"math"
	"testing"
)

func TestParseIperfUDP(t *testing.T) {
	// iperf3 3.12, -u -l 64 -b 0 -t 2 (trimmed).
	out := `{"start": {"test_start": {"protocol": "UDP", "blksize": 64}},
 "end": {
  "sum": {"seconds": 2.00023, "bytes": 26971520, "lost_packets": 8085, "packets": 421430, "lost_percent": 1.918, "sender": true},
  "sum_sent": {"seconds": 2.000057, "bytes": 26971520, "lost_packets": 0, "packets": 421430, "lost_percent": 0, "sender": true},
  "sum_received": {"seconds": 2.00023, "bytes": 26454080, "lost_packets": 8085, "packets": 421430, "lost_percent": 1.918, "sender": false}}}`
	r, err := parseIperfUDP(out)
	if err != nil {
		t.Fatal(err)
	}
	near := func(a, b float64) bool { return math.Abs(a-b) < 0.5 }
	if !near(r.rcvdPPS, (421430-8085)/2.00023) || !near(r.sentPPS, 421430/2.000057) || r.lossPct != 1.918 {
		t.Fatalf("parseIperfUDP = %+v", r)
	}
	// Older iperf3: only "sum", the server's counts.
	r, err = parseIperfUDP(`{"end": {"sum": {"seconds": 2, "packets": 1000, "lost_packets": 100, "lost_percent": 10}}}`)
	if err != nil || r.rcvdPPS != 450 || r.sentPPS != 500 || r.lossPct != 10 {
		t.Fatalf("parseIperfUDP with only sum = %+v, %v", r, err)
	}
	var ie *iperfError
	if _, err := parseIperfUDP(`{"error": "the server is busy running a test. try again later"}`); !errors.As(err, &ie) {
		t.Fatalf("iperf3 error: %v, want an *iperfError", err)
	}
	if _, err := parseIperfUDP(`{"end": {"sum_received": {"seconds": 2, "packets": 0}}}`); err == nil {
		t.Error("nothing received: want an error")
	}
	if _, err := parseIperfUDP("iperf3: error - unable to connect"); err == nil {
		t.Error("not JSON: want an error")
	}
}

func TestParseScaleN(t *testing.T) {
	ns, err := parseScaleN(" 10,100, 1000")
	if err != nil || len(ns) != 3 || ns[0] != 10 || ns[1] != 100 || ns[2] != 1000 {
		t.Fatalf("parseScaleN = %v, %v", ns, err)
	}
	for _, bad := range []string{"", "10,x", "100,10", "10,10", "1", "10,5000"} {
		if ns, err := parseScaleN(bad); err == nil {
			t.Errorf("parseScaleN(%q) = %v, want an error", bad, ns)
		}
	}
}
