package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/lab"
)

// One of a thing is singular in every count fabricctl prints.
func TestCountsAgreeInNumber(t *testing.T) {
	var b bytes.Buffer
	if err := labNodeTable(&b, []lab.NodeStatus{{ID: "n1", State: "running", Warnings: []string{"w"}, NetNSOK: true}}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "(1 warning)") {
		t.Errorf("lab node with one warning: %q", b.String())
	}
	b.Reset()
	if err := statusText(&b, "/s", api.Status{DNS: &api.DNSStatus{Resolvers: 1, Records: 1}}, false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "1 resolver at 127.0.0.11, 1 record\n") {
		t.Errorf("status with one resolver and one record: %q", b.String())
	}
}

func TestStatusBrief(t *testing.T) {
	a := newFakeAgent(t)
	r := a.ctl(t, "status", "--brief")
	if r.code != 0 || r.stdout != "healthy node=node1 datapath=ebpf networks=2 sandboxes=1 endpoints=1 warnings=0\n" {
		t.Errorf("status --brief: exit %d, %q", r.code, r.stdout)
	}
	a.status.Warnings = []string{"something"}
	if r := a.ctl(t, "status", "--brief"); r.code != 1 || !strings.HasPrefix(r.stdout, "degraded ") || strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("status --brief with a warning: exit %d, %q", r.code, r.stdout)
	}
	if r := runCtl(t, "--socket", "/nonexistent/sock", "status", "--brief"); r.code != 2 || r.stdout != "unreachable socket=/nonexistent/sock\n" {
		t.Errorf("status --brief, agent down: exit %d, %q", r.code, r.stdout)
	}
}

// -o yaml prints the API objects with their JSON field names.
func TestOutputYAML(t *testing.T) {
	a := newFakeAgent(t)
	r := a.ctl(t, "-o", "yaml", "network", "ls")
	if r.code != 0 || !strings.Contains(r.stdout, "- created:") && !strings.Contains(r.stdout, "name: bridge") || !strings.Contains(r.stdout, "subnet: 172.18.0.0/16") {
		t.Errorf("network ls -o yaml: exit %d\n%s", r.code, r.stdout)
	}
	if r := a.ctl(t, "-o", "xml", "network", "ls"); r.code != 1 || !strings.Contains(r.stderr, "table, json or yaml") {
		t.Errorf("-o xml: exit %d, %q", r.code, r.stderr)
	}
}

func TestFilterAndFormat(t *testing.T) {
	a := newFakeAgent(t)
	r := a.ctl(t, "network", "ls", "--filter", "internal=true", "--format", "{{.Name}} {{.Subnet}}")
	if r.code != 0 || r.stdout != "blue 10.10.0.0/24\n" {
		t.Errorf("network ls --filter internal=true --format: exit %d, %q", r.code, r.stdout)
	}
	r = a.ctl(t, "network", "ls", "--filter", "name=ridg", "-q")
	if r.code != 0 || r.stdout != "bridge\n" {
		t.Errorf("network ls --filter name=ridg: exit %d, %q", r.code, r.stdout)
	}
	r = a.ctl(t, "sandbox", "ls", "--filter", "state=running", "--format", "{{.Name}} {{.PID}}")
	if r.code != 0 || r.stdout != "web 4242\n" {
		t.Errorf("sandbox ls --filter state=running --format: exit %d, %q", r.code, r.stdout)
	}
	if r := a.ctl(t, "network", "ls", "--filter", "colour=blue"); r.code != 1 || !strings.Contains(r.stderr, "no field \"colour\"") {
		t.Errorf("unknown filter key: exit %d, %q", r.code, r.stderr)
	}
	if r := a.ctl(t, "network", "ls", "--format", "{{.Nope}}"); r.code != 1 || !strings.Contains(r.stderr, "--format") {
		t.Errorf("bad template field: exit %d, %q", r.code, r.stderr)
	}
}
