package metrics

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The monitoring files shipped in deploy/, which name this package's
// metrics.
const deployDir = "../deploy"

var deployFiles = []string{"alerts.yml", "alerts_test.yml", "grafana-dashboard.json", "prometheus.yml"}

// metricName finds fabric metric names in rules, dashboards and docs. Every
// fabric metric starts with fabric_ and nothing else in those files does,
// so the whole text is searched, descriptions included: a renamed metric
// must not survive even in prose.
var metricName = regexp.MustCompile(`\bfabric_[a-z0-9_]*[a-z0-9]`)

func readDeploy(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, name))
	if err != nil {
		t.Fatalf("read deploy file: %v", err)
	}
	return string(b)
}

// TestDeployNamesExportedMetrics fails when an alert, an alert test or a
// dashboard panel uses a metric the registry does not export, for example
// after a rename.
func TestDeployNamesExportedMetrics(t *testing.T) {
	reg, _ := newFullRegistry(t)
	exported := sampleNames(t, reg)
	used := map[string]bool{}
	for _, f := range deployFiles {
		names := metricName.FindAllString(readDeploy(t, f), -1)
		if f != "prometheus.yml" && len(names) == 0 {
			t.Errorf("%s names no fabric metric: is the pattern still right?", f)
		}
		for _, n := range names {
			used[n] = true
			if !exported[n] {
				t.Errorf("deploy/%s uses %s, which the metrics package does not export", f, n)
			}
		}
	}
	var unused []string
	for _, n := range familyNames(t, reg) {
		if !used[n] && !used[n+"_bucket"] {
			unused = append(unused, n)
		}
	}
	if len(unused) > 0 {
		t.Logf("exported but in no alert or panel: %s", strings.Join(unused, " "))
	}
}

// TestDocListsEveryMetric keeps the package documentation's metric list
// equal to what the registry exports.
func TestDocListsEveryMetric(t *testing.T) {
	b, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, n := range metricName.FindAllString(string(b), -1) {
		documented[n] = true
	}
	reg, _ := newFullRegistry(t)
	exported := sampleNames(t, reg)
	for _, n := range familyNames(t, reg) {
		if !documented[n] {
			t.Errorf("%s is exported but not listed in doc.go", n)
		}
	}
	for _, n := range sortedKeys(documented) {
		if !exported[n] {
			t.Errorf("doc.go lists %s, which is not exported", n)
		}
	}
}

// dashboard is the part of Grafana's dashboard model the checks need.
type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name string `json:"name"`
			Type string `json:"type"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ X, Y, W, H int } `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	dec := json.NewDecoder(strings.NewReader(readDeploy(t, "grafana-dashboard.json")))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	return d
}

// TestDashboardShape checks what Grafana would only complain about on
// import, or not at all: unique panel ids, queries on every panel, the
// datasource variable, panels that fit the grid without overlapping, and
// the sections the dashboard promises.
func TestDashboardShape(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard needs a uid (stable links, provisioning) and a title")
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" || vars["instance"] != "query" {
		t.Errorf("template variables %v: want datasource (datasource) and instance (query)", vars)
	}
	ids := map[int]string{}
	type cell struct{ x, y int }
	taken := map[cell]string{}
	var rows []string
	for _, p := range d.Panels {
		if prev, dup := ids[p.ID]; dup {
			t.Errorf("panel id %d used by %q and %q", p.ID, prev, p.Title)
		}
		ids[p.ID] = p.Title
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v does not fit the 24-column grid", p.Title, g)
		}
		for x := g.X; x < g.X+g.W; x++ {
			for y := g.Y; y < g.Y+g.H; y++ {
				if other, ok := taken[cell{x, y}]; ok {
					t.Fatalf("panels %q and %q overlap at %d,%d", other, p.Title, x, y)
				}
				taken[cell{x, y}] = p.Title
			}
		}
		if p.Type == "row" {
			rows = append(rows, p.Title)
			continue
		}
		if p.Title == "" {
			t.Errorf("panel %d has no title", p.ID)
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource must be the ${datasource} variable, so the dashboard imports anywhere", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			if strings.TrimSpace(q.Expr) == "" || q.RefID == "" {
				t.Errorf("panel %q: query %q without expression or refId", p.Title, q.RefID)
			}
		}
	}
	for _, want := range []string{"Traffic", "Drops", "NAT and datapath", "Cluster", "Endpoints and IPAM", "DNS"} {
		if !slices.Contains(rows, want) {
			t.Errorf("dashboard has no %q row (rows: %v)", want, rows)
		}
	}
}

// TestPromtoolCheckMetrics lints a real scrape: the HTTP handler's output,
// as Prometheus would fetch it.
func TestPromtoolCheckMetrics(t *testing.T) {
	bin := promtool(t)
	reg, _ := newFullRegistry(t)
	srv := httptest.NewServer(Handler(reg, nil))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "fabric_datapath_packets_total{") {
		t.Fatalf("scrape: %s\n%.500s", resp.Status, body)
	}
	runPromtool(t, bin, string(body), "check", "metrics")
}

func TestPromtoolRules(t *testing.T) {
	bin := promtool(t)
	runPromtool(t, bin, "", "check", "rules", filepath.Join(deployDir, "alerts.yml"))
	// check config also loads the rule files it names.
	runPromtool(t, bin, "", "check", "config", filepath.Join(deployDir, "prometheus.yml"))
	runPromtool(t, bin, "", "test", "rules", filepath.Join(deployDir, "alerts_test.yml"))
}

// TestPromtoolDashboardQueries parses every dashboard query as PromQL, by
// handing them to promtool as recording rules with Grafana's variables
// filled in: Grafana itself would only show a broken panel.
func TestPromtoolDashboardQueries(t *testing.T) {
	bin := promtool(t)
	vars := strings.NewReplacer("$__rate_interval", "5m", "$instance", ".*")
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	n := 0
	for _, p := range loadDashboard(t).Panels {
		for _, q := range p.Targets {
			if strings.Contains(vars.Replace(q.Expr), "$") {
				t.Errorf("panel %q uses a variable the test does not know: %s", p.Title, q.Expr)
			}
			// JSON strings are valid YAML double-quoted scalars.
			expr, _ := json.Marshal(vars.Replace(q.Expr))
			fmt.Fprintf(&rules, "      - record: dashboard:panel%d:%s\n        expr: %s\n", p.ID, q.RefID, expr)
			n++
		}
	}
	path := filepath.Join(t.TempDir(), "dashboard-queries.yml")
	if err := os.WriteFile(path, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out := runPromtool(t, bin, "", "check", "rules", path)
	if !strings.Contains(out, fmt.Sprintf("%d rules found", n)) {
		t.Errorf("promtool checked a different number of queries than the %d in the dashboard:\n%s", n, out)
	}
}
