package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// scrape fetches the agent's /metrics (default listen 127.0.0.1:9475 in the
// host namespace) and returns every sample as "name{labels}" → value.
func (h *host) scrape() map[string]float64 {
	h.t.Helper()
	out := map[string]float64{}
	for _, line := range strings.Split(h.scrapeRaw(), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			h.t.Fatalf("scrape: bad sample %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

// scrapeRaw returns the exposition text of one scrape.
func (h *host) scrapeRaw() string {
	h.t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			// A socket belongs to the namespace it was made in.
			err = netns.Do(h.nsPath, func() error {
				var d net.Dialer
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
	resp, err := client.Get("http://127.0.0.1:9475/metrics")
	if err != nil {
		h.t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		h.t.Fatalf("scrape: %s: %s", resp.Status, b)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatalf("scrape: %v", err)
	}
	return string(b)
}

// TestMetricsFollowReality scrapes a running agent on the eBPF datapath:
// gauges follow endpoints, counters follow traffic, and a spoofed packet is
// counted as a drop with its reason.
func TestMetricsFollowReality(t *testing.T) {
	h := newHost(t, "--datapath", "ebpf")
	m0 := h.scrape()
	if m0[`fabric_build_info{datapath="ebpf",go_version="`+goVersion(t)+`",version="dev"}`] != 1 {
		t.Fatalf("fabric_build_info missing or wrong: %v", grep(m0, "fabric_build_info"))
	}
	const eps = `fabric_endpoints{driver="bridge",network="bridge"}`
	if m0[eps] != 0 {
		t.Fatalf("%s = %v before any sandbox", eps, m0[eps])
	}
	a, b := h.name("a"), h.name("b")
	h.mustCtl("run", "-d", "--name", a, "--", "sleep", "300")
	h.mustCtl("run", "-d", "--name", b, "--", "sleep", "300")
	m1 := h.scrape()
	if m1[eps] != 2 || m1[`fabric_ipam_addresses{network="bridge",state="used"}`] != 2 || m1["fabric_sandboxes"] != 2 {
		t.Fatalf("after two sandboxes: %v %v", grep(m1, "fabric_endpoints"), grep(m1, "fabric_ipam"))
	}
	const fwd = `fabric_datapath_packets_total{direction="from-endpoint",reason="forward",verdict="redirect"}`
	if !ping(a, h.ip(b, "bridge")) {
		t.Fatal("a cannot ping b")
	}
	m2 := h.scrape()
	if m2[fwd] < m1[fwd]+1 {
		t.Fatalf("forward counter did not rise with a ping: %v → %v", m1[fwd], m2[fwd])
	}
	// A second address on a's eth0 is not a's: packets from it are spoofed.
	netnstest.Run(t, a, "ip", "addr", "add", "172.17.0.200/16", "dev", "eth0")
	_ = exec.Command("ip", "netns", "exec", a, "ping", "-c", "2", "-W", "1", "-I", "172.17.0.200", h.ip(b, "bridge")).Run()
	const spoof = `fabric_datapath_packets_total{direction="from-endpoint",reason="spoofed-ip",verdict="drop"}`
	m3 := h.scrape()
	if m3[spoof] < 2 {
		t.Fatalf("spoofed pings not counted as drops: %v", grep(m3, "spoofed"))
	}
	h.mustCtl("sandbox", "rm", b)
	if m4 := h.scrape(); m4[eps] != 1 {
		t.Fatalf("after rm: %s = %v, want 1", eps, m4[eps])
	}
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Log("promtool not installed (make deps installs it): skipping promtool check metrics on the scrape")
		return
	}
	check := exec.Command("promtool", "check", "metrics")
	check.Stdin = strings.NewReader(h.scrapeRaw())
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics on a real scrape: %v\n%s", err, out)
	}
}

func grep(m map[string]float64, sub string) []string {
	var out []string
	for k, v := range m {
		if strings.Contains(k, sub) {
			out = append(out, fmt.Sprintf("%s=%v", k, v))
		}
	}
	return out
}

func goVersion(t *testing.T) string {
	out, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}
