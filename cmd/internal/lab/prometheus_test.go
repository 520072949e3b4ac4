package lab_test

// A real Prometheus scrapes a lab. The agents serve /metrics on their
// underlay addresses, which only the lab's own namespaces reach, so
// Prometheus runs in the underlay namespace (where the gateway is) and the
// test queries it from there too.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/lab"
	"github.com/fabricnet/fabric/datapath/netns"
)

// promListen is Prometheus's own address. The underlay namespace belongs
// to this lab alone, so nothing else can hold the port.
const promListen = "127.0.0.1:9090"

// promWait bounds every wait for Prometheus to see something.
const promWait = 30 * time.Second

// TestPrometheusScrapesLab: a Prometheus in the underlay namespace scrapes
// the three agents of a lab at the metrics addresses the manifest records,
// and PromQL returns the cluster members each node sees and the overlay
// endpoints per node and in total, following a sandbox's removal.
func TestPrometheusScrapesLab(t *testing.T) {
	l := newTestLab(t)
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("skipping: prometheus not found (Debian package prometheus; `make deps` installs it)")
	}
	m, targets := l.upWithMetrics(t)

	// One overlay network; two sandboxes on n1, one on n2, none on n3.
	l.on(1, "network", "create", "-d", "overlay", "--subnet", "10.78.0.0/16", "ov")
	l.waitNetworkOn(t, "ov", 10*time.Second, 2, 3)
	perNode := map[string]float64{"n1": 2, "n2": 1, "n3": 0}
	var sandboxes []string // on n1
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("n%d", i)
		for k := range int(perNode[id]) {
			sb := fmt.Sprintf("%sp%d%d", l.name, i, k)
			l.on(i, "run", "-d", "--name", sb, "--network", "ov", "--", "sleep", "300")
			if i == 1 {
				sandboxes = append(sandboxes, sb)
			}
		}
	}

	p := startPrometheus(t, bin, netns.Path(m.Underlay.NetNS), targets)

	// Every target is scraped, at the address the manifest gives.
	took := p.waitFor(`up{job="fabric"}`, map[string]float64{"n1": 1, "n2": 1, "n3": 1})
	t.Logf("all 3 targets up after %v", took.Round(time.Millisecond))
	samples, raw, err := p.query(`up{job="fabric"}`)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range samples {
		if node := s.Metric["node"]; s.Metric["instance"] != targets[node] {
			t.Errorf("up: node %s scraped at %q, want %s; response %s", node, s.Metric["instance"], targets[node], raw)
		}
	}

	// Each node sees the three members alive; so does the cluster-wide
	// view an alert would take.
	p.waitFor(`fabric_cluster_members{job="fabric",state="alive"}`, map[string]float64{"n1": 3, "n2": 3, "n3": 3})
	p.waitFor(`min(fabric_cluster_members{job="fabric",state="alive"})`, map[string]float64{"": 3})

	// Endpoints on the overlay per node, sandboxes per node, and in total.
	p.waitFor(`sum by (node) (fabric_endpoints{job="fabric",network="ov"})`, perNode)
	p.waitFor(`sum by (node) (fabric_sandboxes{job="fabric"})`, perNode)
	p.waitFor(`sum(fabric_endpoints{job="fabric",network="ov"})`, map[string]float64{"": 3})

	// The queries follow a removed sandbox.
	l.on(1, "sandbox", "rm", sandboxes[0])
	perNode["n1"]--
	took = p.waitFor(`sum by (node) (fabric_endpoints{job="fabric",network="ov"})`, perNode)
	t.Logf("removal seen by Prometheus after %v", took.Round(time.Millisecond))
	p.waitFor(`sum(fabric_endpoints{job="fabric",network="ov"})`, map[string]float64{"": 2})
}

// upWithMetrics brings up a 3-node kernel lab and checks that each node's
// metrics address (node IP:9475) is in the manifest, its agent's flags,
// lab up's output and lab status; it returns the manifest and the
// addresses by node ID.
func (l *testLab) upWithMetrics(t *testing.T) (*lab.Manifest, map[string]string) {
	t.Helper()
	out := l.mustCtl("lab", "up", "--nodes", "3", "--datapath", "kernel", "--subnet", l.subnet)
	m, err := lab.Load(lab.DefaultRoot, l.name)
	if err != nil {
		t.Fatal(err)
	}
	targets := make(map[string]string, len(m.Nodes)) // node ID → host:port
	for i, n := range m.Nodes {
		want := l.ip(i+1) + ":9475"
		if n.Metrics.String() != want || !slices.Contains(n.Argv, "--metrics-listen") {
			t.Fatalf("node %s: manifest metrics address %q, argv %q; want --metrics-listen %s", n.ID, n.Metrics, n.Argv, want)
		}
		targets[n.ID] = want
		if !strings.Contains(out, want) {
			t.Errorf("lab up output does not show node %s's metrics address %s", n.ID, want)
		}
	}
	st, _ := l.status()
	table, _, _ := l.ctl("lab", "status")
	for _, n := range st.Nodes {
		if n.Metrics.String() != targets[n.ID] || !strings.Contains(table, targets[n.ID]) {
			t.Errorf("lab status: node %s metrics %q (json), want %s also in the table", n.ID, n.Metrics, targets[n.ID])
		}
	}
	return m, targets
}

// promServer is a Prometheus running in a namespace, for the test.
type promServer struct {
	t      *testing.T
	base   string
	client *http.Client
	log    string
	exited chan error // gets Wait's result once the process ends
}

// startPrometheus writes a configuration scraping targets (node ID →
// host:port, labelled node=ID) every second, starts Prometheus in the
// namespace at nsPath, and stops it when the test ends.
func startPrometheus(t *testing.T, bin, nsPath string, targets map[string]string) *promServer {
	t.Helper()
	dir := t.TempDir() // before the Cleanup below, so removed after Prometheus stops
	var cfg strings.Builder
	cfg.WriteString("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n" +
		"scrape_configs:\n  - job_name: fabric\n    static_configs:\n")
	for _, id := range slices.Sorted(maps.Keys(targets)) {
		fmt.Fprintf(&cfg, "      - targets: ['%s']\n        labels: {node: %s}\n", targets[id], id)
	}
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &promServer{t: t, base: "http://" + promListen, log: filepath.Join(dir, "prometheus.log"),
		exited: make(chan error, 1)}
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close() // the child has its own descriptor once started

	cmd := exec.Command(bin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promListen)
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, logf, logf
	// Dies with the test binary if that crashes before its cleanups run.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var startErr error
	err = netns.Do(nsPath, func() error {
		startErr = cmd.Start() // forked from a thread in the namespace
		return nil
	})
	if startErr != nil || cmd.Process == nil {
		t.Fatalf("start prometheus in %s: %v", nsPath, errors.Join(startErr, err))
	}
	go func() { p.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			t.Logf("prometheus log (tail):\n%s", tail(b, 4000))
		}
	})

	// A socket belongs to the namespace it was made in: dial from there.
	p.client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = netns.Do(nsPath, func() error {
				var d net.Dialer
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
	t.Cleanup(p.client.CloseIdleConnections)
	return p
}

// promSample is one element of an instant vector.
type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  []json.RawMessage `json:"value"` // [unix time, "value"]
}

// query runs an instant PromQL query and returns its vector and the raw
// response, for messages.
func (p *promServer) query(q string) ([]promSample, string, error) {
	resp, err := p.client.Get(p.base + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil, "", fmt.Errorf("query %s: %w", q, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, "", fmt.Errorf("query %s: read response: %w", q, err)
	}
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string       `json:"resultType"`
			Result     []promSample `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, string(body), fmt.Errorf("query %s: %s: decode: %w", q, resp.Status, err)
	}
	if r.Status != "success" || r.Data.ResultType != "vector" {
		return nil, string(body), fmt.Errorf("query %s: %s: status %q, result type %q, error %q",
			q, resp.Status, r.Status, r.Data.ResultType, r.Error)
	}
	return r.Data.Result, string(body), nil
}

// byNode returns a vector's values keyed by their node label ("" for an
// aggregate without it).
func byNode(samples []promSample) (map[string]float64, error) {
	out := make(map[string]float64, len(samples))
	for _, s := range samples {
		var v string
		if len(s.Value) != 2 || json.Unmarshal(s.Value[1], &v) != nil {
			return nil, fmt.Errorf("sample %v: value %s is not [time, \"number\"]", s.Metric, s.Value)
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil, fmt.Errorf("sample %v: %w", s.Metric, err)
		}
		node := s.Metric["node"]
		if _, dup := out[node]; dup {
			return nil, fmt.Errorf("two samples for node %q", node)
		}
		out[node] = f
	}
	return out, nil
}

// waitFor polls q every 250 ms until its vector is exactly want (node →
// value), for at most promWait, and returns how long that took.
func (p *promServer) waitFor(q string, want map[string]float64) time.Duration {
	p.t.Helper()
	t0 := time.Now()
	var got map[string]float64
	var raw string
	var err error
	for {
		select {
		case werr := <-p.exited:
			p.exited <- werr // for the cleanup
			p.t.Fatalf("prometheus exited (%v) while waiting for %s", werr, q)
		default:
		}
		var samples []promSample
		if samples, raw, err = p.query(q); err == nil {
			got, err = byNode(samples)
		}
		if err == nil && maps.Equal(got, want) {
			return time.Since(t0)
		}
		if time.Since(t0) > promWait {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	p.t.Fatalf("PromQL %s: after %v got %v (error %v), want %v\nresponse: %s", q, promWait, got, err, want, raw)
	return 0
}

// tail returns about the last n bytes of b.
func tail(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	b = b[len(b)-n:]
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[i+1:]
	}
	return b
}
