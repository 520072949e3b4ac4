package main

import (
	"errors"
	"maps"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

func TestParseIperf(t *testing.T) {
	out := `{"start": {}, "intervals": [],
 "end": {"sum_sent": {"bytes": 7000000000, "bits_per_second": 11.2e9, "retransmits": 42},
         "sum_received": {"bytes": 6990000000, "bits_per_second": 11.1e9}}}`
	r, err := parseIperf(out)
	if err != nil || r.gbps != 11.1 || r.retransmits != 42 {
		t.Fatalf("parseIperf = %+v, %v", r, err)
	}
	// No "retransmits" (not reported by the sender's OS): zero, no error.
	r, err = parseIperf(`{"end": {"sum_sent": {}, "sum_received": {"bits_per_second": 1e9}}}`)
	if err != nil || r.gbps != 1 || r.retransmits != 0 {
		t.Fatalf("parseIperf without retransmits = %+v, %v", r, err)
	}
	_, err = parseIperf(`{"error": "the server is busy running a test. try again later"}`)
	var ie *iperfError
	if !errors.As(err, &ie) || !ie.busy() {
		t.Fatalf("busy server: %v, want a busy *iperfError", err)
	}
	_, err = parseIperf(`{"error": "unable to connect to server: Connection refused"}`)
	if !errors.As(err, &ie) || ie.busy() {
		t.Fatalf("refused: %v, want a non-busy *iperfError", err)
	}
	if _, err := parseIperf("iperf3: error - unable to connect"); err == nil || errors.As(err, &ie) {
		t.Fatalf("not JSON: %v, want a plain error", err)
	}
}

func TestParseProcNetStat(t *testing.T) {
	snmp := `Ip: Forwarding DefaultTTL
Ip: 1 64
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens RetransSegs
Tcp: 1 200 120000 -1 12 345
Udp: InDatagrams NoPorts
Udp: 5 6
`
	netstat := `TcpExt: SyncookiesSent TCPSACKReorder TCPOFOQueue
TcpExt: 0 17 901
IpExt: InNoRoutes InTruncatedPkts
IpExt: 0 0
`
	c := tcpCounters{}
	for _, s := range []string{snmp, netstat} {
		if err := parseProcNetStat(strings.NewReader(s), c); err != nil {
			t.Fatal(err)
		}
	}
	want := tcpCounters{"TcpRtoAlgorithm": 1, "TcpRtoMin": 200, "TcpRtoMax": 120000, "TcpActiveOpens": 12,
		"TcpRetransSegs": 345, "TcpExtSyncookiesSent": 0, "TcpExtTCPSACKReorder": 17, "TcpExtTCPOFOQueue": 901}
	if !maps.Equal(c, want) {
		t.Fatalf("parsed %v, want %v", c, want)
	}
	before := tcpCounters{"TcpRetransSegs": 300, "TcpExtTCPOFOQueue": 1000}
	if d := c.delta(before, "TcpRetransSegs"); d != 45 {
		t.Errorf("delta RetransSegs = %v, want 45", d)
	}
	if d := c.delta(before, "TcpExtTCPOFOQueue"); d != 0 {
		t.Errorf("delta of a counter that went down = %v, want 0", d)
	}
	if err := parseProcNetStat(strings.NewReader("Tcp: A B\nTcp: 1\n"), tcpCounters{}); err == nil {
		t.Error("mismatched Tcp lines: want an error")
	}
}

func TestTarget(t *testing.T) {
	for _, c := range []struct {
		got, limit float64
		atLeast    bool
		unit, want string
	}{
		{0.98, 0.97, true, "×", "x: 0.98× (met)"},
		{0.90, 0.97, true, "×", "x: 0.90× (NOT met)"},
		{1.10, 1.05, false, "×", "x: 1.10× (NOT met)"},
		{12, 40, false, "", "x: 12 vs 40 (met)"},
		{math.NaN(), 1, true, "×", "x: not measured"},
	} {
		if got := target("x", c.got, c.limit, c.atLeast, c.unit); got != c.want {
			t.Errorf("target(%v, %v, %v) = %q, want %q", c.got, c.limit, c.atLeast, got, c.want)
		}
	}
}

// A bad -scale-n keeps strconv's cause, so callers can tell a typo from a
// number out of range.
func TestParseScaleNKeepsTheCause(t *testing.T) {
	if _, err := parseScaleN("2,x"); !errors.Is(err, strconv.ErrSyntax) {
		t.Fatalf("parseScaleN(2,x): %v, want one wrapping strconv.ErrSyntax", err)
	}
	if _, err := parseScaleN("1"); err == nil || errors.Is(err, strconv.ErrSyntax) {
		t.Fatalf("parseScaleN(1): %v, want an out-of-range error", err)
	}
}

func TestEverySectionRuns(t *testing.T) {
	l := &Lab{}
	for _, s := range allSections {
		if l.section(s) == nil {
			t.Errorf("section %q is listed but has no function", s)
		}
	}
	if l.section("no-such-section") != nil {
		t.Error("an unknown section has a function")
	}
	for _, only := range []string{"", "scale, dns"} {
		got, err := parseOnly(only)
		if err != nil || (only == "" && len(got) != len(allSections)) || (only != "" && (len(got) != 2 || !got["scale"] || !got["dns"])) {
			t.Errorf("parseOnly(%q) = %v, %v", only, got, err)
		}
	}
	if _, err := parseOnly("scale,nope"); err == nil {
		t.Error("parseOnly accepted an unknown section")
	}
}

// Every host link to h2 has a /24 of its own: two on one subnet make h2
// send one host's traffic to the other (the docker section's db once
// shared k1's 192.168.251.0/24, and Docker's DNAT rows failed in a full
// run with "connection refused" from k1).
func TestUnderlaySubnetsDistinct(t *testing.T) {
	links := map[string][2]string{"h1": {h1IP, h2IP}, "k1": {k1IP, k2IP}, "db": {dbIP, dbPeer}, "df": {dfIP, dfPeer}}
	seen := map[netip.Prefix]string{}
	for host, ends := range links {
		a := netip.PrefixFrom(netip.MustParseAddr(ends[0]), 24).Masked()
		b := netip.PrefixFrom(netip.MustParseAddr(ends[1]), 24).Masked()
		if a != b {
			t.Errorf("%s's link: %s and %s are not on one /24", host, ends[0], ends[1])
		}
		if other, ok := seen[a]; ok {
			t.Errorf("%s's link and %s's share %s", host, other, a)
		}
		seen[a] = host
	}
}
