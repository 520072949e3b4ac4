package main

import (
	"math"
	"os"
	"path/filepath"
	"testing"
)

func TestParseSockperf(t *testing.T) {
	out := `sockperf: [Valid Duration] RunTime=0.550 sec; SentMessages=27455; ReceivedMessages=27455
sockperf: ---> <MAX> observation =  862.899
sockperf: ---> percentile 99.999 =  862.899
sockperf: ---> percentile 99.000 =   30.372
sockperf: ---> percentile 50.000 =    8.896
sockperf: ---> <MIN> observation =    8.440
`
	p50, p99, err := parseSockperf(out)
	if err != nil || p50 != 8.896 || p99 != 30.372 {
		t.Fatalf("parseSockperf = %v %v %v", p50, p99, err)
	}
	if _, _, err := parseSockperf("sockperf: error: connection refused\n"); err == nil {
		t.Fatal("no percentiles: want an error")
	}
}

func TestParseWrk(t *testing.T) {
	out := `Running 2s test @ http://192.168.250.1:8082/
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   1.02ms  300.00us   5.00ms   90.00%
  14916 requests in 2.00s, 1.20MB read
  Socket errors: connect 0, read 3, write 0, timeout 0
Requests/sec:   7458.12
Transfer/sec:    600.00KB
`
	r, err := parseWrk(out)
	if err != nil || r.rps != 7458.12 || r.errors != "Socket errors: connect 0, read 3, write 0, timeout 0" {
		t.Fatalf("parseWrk = %+v, %v", r, err)
	}
	if _, err := parseWrk("unable to connect to 192.168.250.1:8082 Connection refused\n"); err == nil {
		t.Fatal("no Requests/sec: want an error")
	}
}

func TestMedianPercentile(t *testing.T) {
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median odd = %v", m)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("median even = %v", m)
	}
	if !math.IsNaN(median(nil)) {
		t.Error("median of nothing must be NaN")
	}
	xs := make([]float64, 100)
	for i := range xs {
		xs[i] = float64(100 - i)
	}
	for p, want := range map[float64]float64{50: 50, 99: 99, 100: 100, 0: 1} {
		if got := percentile(xs, p); got != want {
			t.Errorf("percentile(%v) = %v, want %v", p, got, want)
		}
	}
}

func TestFmtThousands(t *testing.T) {
	for in, want := range map[float64]string{9600: "9,600", 999: "999", 1234567.4: "1,234,567", -4300: "-4,300"} {
		if got := fmtThousands(in); got != want {
			t.Errorf("fmtThousands(%v) = %q, want %q", in, got, want)
		}
	}
}

func TestParseSandbox(t *testing.T) {
	obj := `{"name":"x","netns":"/var/run/netns/x","endpoints":[{"ip":"172.17.0.5/16"}]}`
	for _, in := range []string{obj, "[" + obj + "]\n"} {
		sb, err := parseSandbox(in)
		if err != nil {
			t.Fatal(err)
		}
		ip, err := sandboxIP(sb)
		if err != nil || ip != "172.17.0.5" {
			t.Fatalf("sandboxIP = %q, %v", ip, err)
		}
	}
	if _, err := parseSandbox("[]"); err == nil {
		t.Error("empty list: want an error")
	}
}

func TestReadListeners(t *testing.T) {
	f := filepath.Join(t.TempDir(), "tcp")
	data := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:2B67 0200007F:1F40 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
`
	if err := os.WriteFile(f, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	got := map[int]bool{}
	readListeners(f, got)
	if !got[5201] || got[11111] || len(got) != 1 {
		t.Fatalf("listeners = %v, want only 5201", got)
	}
}
