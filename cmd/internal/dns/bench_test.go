package dns

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/fabricbench/dnsload"
	"github.com/miekg/dns"
)

// BenchmarkLocalQueries measures local answers over UDP with 50 clients
// per GOMAXPROCS, each waiting for its answer before the next query.
func BenchmarkLocalQueries(b *testing.B) {
	s := newTestServer(b, Config{Upstreams: []string{closedPort(b)}})
	addr := attach(b, s, "ui")
	query, err := new(dns.Msg).SetQuestion("web.", dns.TypeA).Pack()
	if err != nil {
		b.Fatal(err)
	}
	b.SetParallelism(50)
	b.ReportAllocs()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("udp", addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		msg := append([]byte(nil), query...)
		buf := make([]byte, 512)
		var id uint16
		for pb.Next() {
			id++
			binary.BigEndian.PutUint16(msg, id)
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(msg); err != nil {
				b.Error(err)
				return
			}
			for {
				n, err := c.Read(buf)
				if err != nil {
					b.Error(err)
					return
				}
				if n >= 12 && binary.BigEndian.Uint16(buf) == id {
					break
				}
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "qps")
}

// TestLoadNumbers prints dnsload.Run's numbers for 1 and 100 clients, local
// and forwarded names (fake upstream on loopback). It runs only with
// FABRIC_DNS_LOAD set to a duration per case (e.g. FABRIC_DNS_LOAD=5s).
func TestLoadNumbers(t *testing.T) {
	v := os.Getenv("FABRIC_DNS_LOAD")
	if v == "" {
		t.Skip("set FABRIC_DNS_LOAD=5s to run the load test")
	}
	dur, err := time.ParseDuration(v)
	if err != nil || dur <= 0 || dur > 5*time.Minute {
		t.Fatalf("FABRIC_DNS_LOAD=%q: want a duration up to 5m", v)
	}
	up := startUpstream(t, "127.0.0.1", ip("192.0.2.7"))
	s := newTestServer(t, Config{Upstreams: []string{up.addr}, MaxInflight: 1024})
	addr := attach(t, s, "ui")
	for _, name := range []string{"web", "forwarded.example"} {
		for _, clients := range []int{1, 100} {
			for _, where := range []string{"in-process", "separate process"} {
				var res loadResult
				if where == "in-process" {
					res.QPS, res.P50, res.P99, err = dnsload.Run(context.Background(), addr, clients, dur, name)
				} else {
					res, err = loadInChild(addr, clients, dur, name)
				}
				if err != nil {
					t.Errorf("%s, %d clients, %s: %v", name, clients, where, err)
				}
				t.Logf("%-18s %3d clients, client %-16s: %8.0f qps  p50 %-9v p99 %v", name, clients, where, res.QPS, res.P50.Round(time.Microsecond), res.P99.Round(time.Microsecond))
			}
		}
	}
	st := s.Stats()
	t.Logf("stats: local %d forwarded %d failed %d (inflight rejected %d)", st.Local, st.Forwarded, st.ForwardFailed, st.InflightRejected)
}

type loadResult struct {
	QPS      float64
	P50, P99 time.Duration
	Err      string
}

// loadInChild runs dnsload.Run in a child process (this test binary), as an
// external load generator such as dnsperf would: the client does not share
// the server's Go scheduler.
func loadInChild(addr string, clients int, dur time.Duration, name string) (loadResult, error) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestLoadChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), "FABRIC_DNS_LOAD=", "FABRIC_DNS_LOAD_CHILD="+strings.Join([]string{addr, strconv.Itoa(clients), dur.String(), name}, ","))
	out, err := cmd.Output()
	var res loadResult
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, "LOADRESULT "); ok {
			if err := json.Unmarshal([]byte(rest), &res); err != nil {
				return res, fmt.Errorf("child result %q: %w", rest, err)
			}
			if res.Err != "" {
				return res, errors.New(res.Err)
			}
			return res, nil
		}
	}
	return res, fmt.Errorf("load child: no result (%v): %s", err, out)
}

// TestLoadChild is the child process of loadInChild.
func TestLoadChild(t *testing.T) {
	v := os.Getenv("FABRIC_DNS_LOAD_CHILD")
	if v == "" {
		t.Skip("runs only as the child of TestLoadNumbers")
	}
	f := strings.Split(v, ",")
	if len(f) != 4 {
		t.Fatalf("FABRIC_DNS_LOAD_CHILD=%q", v)
	}
	clients, _ := strconv.Atoi(f[1])
	dur, _ := time.ParseDuration(f[2])
	var res loadResult
	var err error
	res.QPS, res.P50, res.P99, err = dnsload.Run(context.Background(), f[0], clients, dur, f[3])
	if err != nil {
		res.Err = err.Error()
	}
	b, _ := json.Marshal(res)
	fmt.Printf("LOADRESULT %s\n", b)
}
