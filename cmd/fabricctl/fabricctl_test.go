package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

func TestNetworkCreateSendsAllFlags(t *testing.T) {
	a := newFakeAgent(t)
	r := a.ctl(t, "network", "create", "-d", "bridge", "--subnet", "10.20.0.0/16", "--gateway", "10.20.0.254",
		"--ip-range", "10.20.1.0/24", "--internal", "-o", "mtu=1450", "--opt", "bridge_name=br-x", "-o", "empty=", "red")
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	var got api.NetworkCreate
	decode(t, a.find(t, "POST", "/v1/networks"), &got)
	want := api.NetworkCreate{
		Name: "red", Driver: "bridge", Subnet: "10.20.0.0/16", Gateway: "10.20.0.254", IPRange: "10.20.1.0/24",
		Internal: true, Options: map[string]string{"mtu": "1450", "bridge_name": "br-x", "empty": ""},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("request body\n got %+v\nwant %+v", got, want)
	}
	if r.stdout != "cccccccccccccccccccc\n" {
		t.Errorf("stdout %q, want the network ID", r.stdout)
	}
}

func TestNetworkCreateOutputJSONIsLongFormOnly(t *testing.T) {
	a := newFakeAgent(t)
	r := a.ctl(t, "network", "create", "--output", "json", "red")
	var n api.Network
	if err := json.Unmarshal([]byte(r.stdout), &n); err != nil || n.Name != "red" {
		t.Fatalf("--output json: got %q (%v)", r.stdout, err)
	}
	var got api.NetworkCreate
	decode(t, a.find(t, "POST", "/v1/networks"), &got)
	if got.Driver != "bridge" || got.Options != nil {
		t.Errorf("defaults: got %+v", got)
	}

	// -o is --opt here, so a bare format is a bad option, caught locally.
	r = a.ctl(t, "network", "create", "-o", "json", "red2")
	if r.code != exitFailure || !strings.Contains(r.stderr, `bad driver option "json"`) {
		t.Errorf("-o json on create: exit %d, stderr %q", r.code, r.stderr)
	}
	for _, req := range a.received() {
		if strings.Contains(string(req.Body), "red2") {
			t.Errorf("agent contacted for a bad option: %s", req.Body)
		}
	}
}

func TestNetworkLsTableAndJSON(t *testing.T) {
	a := newFakeAgent(t)
	r := a.ctl(t, "network", "ls")
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("want header + 2 rows, got %q", r.stdout)
	}
	if f := strings.Fields(lines[0]); !reflect.DeepEqual(f, []string{"NAME", "ID", "DRIVER", "SCOPE", "SUBNET", "GATEWAY", "INTERNAL", "ENDPOINTS", "PARENT", "HEALTH"}) {
		t.Errorf("header %q", lines[0])
	}
	if f := strings.Fields(lines[1]); !reflect.DeepEqual(f, []string{"blue", "bbbbbbbbbbbb", "bridge", "local", "10.10.0.0/24", "10.10.0.1", "true", "0", "-", "ok"}) {
		t.Errorf("row %q", lines[1])
	}

	for _, args := range [][]string{{"-o", "json", "network", "ls"}, {"network", "ls", "--output=json"}} {
		r = a.ctl(t, args...)
		var nets []api.Network
		if err := json.Unmarshal([]byte(r.stdout), &nets); err != nil {
			t.Fatalf("%v: bad json %q: %v", args, r.stdout, err)
		}
		if want := []api.Network{a.networks[1], a.networks[0]}; !reflect.DeepEqual(nets, want) {
			t.Errorf("%v: got %+v", args, nets)
		}
		if !strings.Contains(r.stdout, "\n    ") {
			t.Errorf("%v: json not indented: %q", args, r.stdout)
		}
	}

	r = a.ctl(t, "network", "ls", "-q")
	if r.stdout != "blue\nbridge\n" {
		t.Errorf("-q: %q", r.stdout)
	}
}

// TestSandboxOwnerColumn: a sandbox a CNI runtime attached shows as owned
// by CNI, by its (shortened) container ID; fabric's own show nothing there.
func TestSandboxOwnerColumn(t *testing.T) {
	var buf strings.Builder
	err := sandboxTable(&buf, []api.Sandbox{
		{Name: "cni-0123456789abcdef", Mode: api.ModeExternal, State: api.StateCreated, Owner: api.OwnerCNI,
			ContainerID: "3f2a9c0d1e4b5a6978", Endpoints: []api.Endpoint{{Network: "pods", IP: "10.88.0.2/16"}}},
		{Name: "web", Mode: api.ModeNetNS, State: api.StateCreated},
	})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("table: %q", buf.String())
	}
	if f := strings.Fields(lines[1]); f[len(f)-1] != "cni:3f2a9c0d1e4b" {
		t.Errorf("CNI row %q: want owner cni:3f2a9c0d1e4b last", lines[1])
	}
	if f := strings.Fields(lines[2]); f[len(f)-1] != "-" {
		t.Errorf("fabric's own row %q: want no owner", lines[2])
	}
}

func TestSandboxAndEndpointTables(t *testing.T) {
	a := newFakeAgent(t)
	r := a.ctl(t, "sandbox", "ls")
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	want := [][]string{
		{"NAME", "MODE", "STATE", "PID", "NETWORKS", "PORTS", "OWNER"},
		{"web", "netns", "running", "4242", "bridge=172.18.0.2/16", "0.0.0.0:8080->80/tcp", "-"},
	}
	if len(lines) != len(want) {
		t.Fatalf("sandbox ls: %q", r.stdout)
	}
	for i := range want {
		if f := strings.Fields(lines[i]); !reflect.DeepEqual(f, want[i]) {
			t.Errorf("sandbox ls line %d: %q, want %q", i, f, want[i])
		}
	}

	r = a.ctl(t, "endpoint", "ls")
	lines = strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	if f := strings.Fields(lines[0]); !reflect.DeepEqual(f, []string{"SANDBOX", "NETWORK", "IFNAME", "IP", "MAC", "HOST-IF"}) {
		t.Errorf("endpoint header %q", lines[0])
	}
	if f := strings.Fields(lines[1]); !reflect.DeepEqual(f, []string{"web", "bridge", "eth0", "172.18.0.2/16", "02:42:ac:12:00:02", "fab1234"}) {
		t.Errorf("endpoint row %q", lines[1])
	}

	r = a.ctl(t, "-o", "json", "endpoint", "ls")
	var eps []api.Endpoint
	if err := json.Unmarshal([]byte(r.stdout), &eps); err != nil || len(eps) != 1 || eps[0].HostIfName != "fab1234" {
		t.Errorf("endpoint ls -o json: %q (%v)", r.stdout, err)
	}
}

func TestEmptyListIsJSONArray(t *testing.T) {
	a := newFakeAgent(t)
	a.sandboxes = nil
	r := a.ctl(t, "sandbox", "ls", "-o", "json")
	if strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("want [], got %q", r.stdout)
	}
}

func TestInspectIsJSONAndReportsMissing(t *testing.T) {
	a := newFakeAgent(t)
	r := a.ctl(t, "sandbox", "inspect", "web", "nope")
	if r.code != exitFailure {
		t.Errorf("exit %d, want 1 for a missing name", r.code)
	}
	var sbs []api.Sandbox
	if err := json.Unmarshal([]byte(r.stdout), &sbs); err != nil || len(sbs) != 1 || sbs[0].Name != "web" {
		t.Errorf("inspect output %q (%v)", r.stdout, err)
	}
	if r.stderr != "Error: sandbox nope not found\n" {
		t.Errorf("stderr %q", r.stderr)
	}

	r = a.ctl(t, "network", "inspect", "blue")
	var nets []api.Network
	if err := json.Unmarshal([]byte(r.stdout), &nets); err != nil || r.code != 0 || nets[0].Name != "blue" {
		t.Errorf("network inspect: exit %d, %q (%v)", r.code, r.stdout, err)
	}
}

func TestRunDetachedSendsRequest(t *testing.T) {
	a := newFakeAgent(t)
	r := a.ctl(t, "run", "-d", "--name", "web2", "--network", "blue", "--ip", "10.10.0.9",
		"-p", "8080:80", "-p", "127.0.0.1:5353:53/udp", "--alias", "www", "--alias", "w2", "--rm",
		"--", "python3", "-m", "http.server", "80")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if r.stdout != "web2\n" {
		t.Errorf("stdout %q, want the sandbox name", r.stdout)
	}
	var got api.SandboxCreate
	decode(t, a.find(t, "POST", "/v1/sandboxes"), &got)
	want := api.SandboxCreate{
		Name: "web2", Network: "blue", IP: "10.10.0.9",
		Ports:   []string{"8080:80", "127.0.0.1:5353:53/udp"},
		Aliases: []string{"www", "w2"},
		Command: []string{"python3", "-m", "http.server", "80"}, AutoRemove: true,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("request body\n got %+v\nwant %+v", got, want)
	}
	if n := len(a.received()); n != 1 {
		t.Errorf("a detached run should make one request, made %v", a.summary())
	}
}

func TestRunWithoutDashDashStopsAtCommand(t *testing.T) {
	a := newFakeAgent(t)
	r := a.ctl(t, "run", "-d", "sh", "-c", "sleep 1")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	var got api.SandboxCreate
	decode(t, a.find(t, "POST", "/v1/sandboxes"), &got)
	if !reflect.DeepEqual(got.Command, []string{"sh", "-c", "sleep 1"}) {
		t.Errorf("command %q", got.Command)
	}
}

func TestConnectPassesNamespacePath(t *testing.T) {
	a := newFakeAgent(t)
	r := a.ctl(t, "network", "connect", "--ip", "10.10.0.5", "--alias", "db", "--alias", "pg", "blue", "/proc/4242/ns/net")
	if r.code != 0 || r.stdout != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	var got api.Connect
	decode(t, a.find(t, "POST", "/v1/networks/blue/connect"), &got)
	want := api.Connect{Sandbox: "/proc/4242/ns/net", IP: "10.10.0.5", Aliases: []string{"db", "pg"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}

	r = a.ctl(t, "network", "disconnect", "blue", "/var/run/netns/lab1")
	var d api.Disconnect
	decode(t, a.find(t, "POST", "/v1/networks/blue/disconnect"), &d)
	if r.code != 0 || d.Sandbox != "/var/run/netns/lab1" {
		t.Errorf("disconnect: exit %d, body %+v", r.code, d)
	}
}

func TestRemoveCommands(t *testing.T) {
	a := newFakeAgent(t)
	if r := a.ctl(t, "network", "rm", "blue", "red"); r.code != 0 || r.stdout != "blue\nred\n" {
		t.Errorf("network rm: exit %d, stdout %q", r.code, r.stdout)
	}
	a.find(t, "DELETE", "/v1/networks/blue")
	a.find(t, "DELETE", "/v1/networks/red")
	if r := a.ctl(t, "sandbox", "remove", "web"); r.code != 0 || r.stdout != "web\n" {
		t.Errorf("sandbox remove: exit %d, stdout %q", r.code, r.stdout)
	}
	a.find(t, "DELETE", "/v1/sandboxes/web")
}

func TestAgentRejectionMessageAndExitCode(t *testing.T) {
	a := newFakeAgent(t)
	msg := "network blue has 2 endpoints: disconnect them first (fabricctl endpoint ls)"
	a.reject["DELETE /v1/networks/{name}"] = &api.Error{Message: msg, Code: api.CodeConflict}
	r := a.ctl(t, "network", "rm", "blue")
	if r.code != exitFailure {
		t.Errorf("exit %d, want 1", r.code)
	}
	if r.stderr != "Error: "+msg+"\n" {
		t.Errorf("stderr %q", r.stderr)
	}

	a.reject["POST /v1/sandboxes"] = &api.Error{Message: "port 8080/tcp is already published by web", Code: api.CodeConflict}
	r = a.ctl(t, "run", "--network", "host", "-p", "8080:80", "--", "sh", "-c", "exit 0")
	if r.code != exitFailure || r.stderr != "Error: port 8080/tcp is already published by web\n" {
		t.Errorf("run rejected: exit %d, stderr %q", r.code, r.stderr)
	}
	for _, req := range a.received() {
		if req.Method == "PUT" {
			t.Errorf("ran a command after the agent refused the sandbox: %v", a.summary())
		}
	}
}

func TestUnreachableAgentExits2(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nothing.sock")
	for _, args := range [][]string{
		{"status"}, {"network", "ls"}, {"network", "rm", "a", "b"}, {"sandbox", "inspect", "x"},
		{"run", "--", "true"}, {"run", "-d", "--", "true"},
	} {
		r := runCtl(t, append([]string{"--socket", sock}, args...)...)
		if r.code != exitUnreachable {
			t.Errorf("%v: exit %d, want 2", args, r.code)
		}
		if !strings.HasPrefix(r.stderr, "Error: agent unreachable") || strings.Count(r.stderr, "Error:") != 1 {
			t.Errorf("%v: stderr %q", args, r.stderr)
		}
	}
}

func TestSocketFromEnvironment(t *testing.T) {
	a := newFakeAgent(t)
	t.Setenv(socketEnv, a.socket)
	if r := runCtl(t, "status"); r.code != 0 {
		t.Errorf("status via %s: exit %d, stderr %q", socketEnv, r.code, r.stderr)
	}
}

func TestStatus(t *testing.T) {
	a := newFakeAgent(t)
	r := a.ctl(t, "status")
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	for _, s := range []string{"running at " + a.socket, "1.0.0", "node1", "ebpf", "tc on eth0", "Warnings:  none"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("status output lacks %q:\n%s", s, r.stdout)
		}
	}

	a.status.Warnings = []string{"xdp not supported on eth0; using tc only"}
	r = a.ctl(t, "status", "-o", "json")
	if r.code != exitFailure {
		t.Errorf("exit %d with warnings, want 1", r.code)
	}
	var st api.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || !reflect.DeepEqual(st, a.status) {
		t.Errorf("status json %q (%v)", r.stdout, err)
	}
	if r.stderr != "" {
		t.Errorf("warnings are output, not errors: stderr %q", r.stderr)
	}
}

func TestStatusCluster(t *testing.T) {
	a := newFakeAgent(t)
	a.status.Cluster = &api.ClusterStatus{
		Node: "node1", Gossip: "10.0.0.1:7946", Tunnel: "10.0.0.1:4789", Alive: 2, Encrypted: true, Networks: 1,
		Members: []api.Member{
			{Name: "node1", Addr: "10.0.0.1", State: "alive", Reachable: true, Datapath: "ebpf", Endpoints: 3},
			{Name: "node2", Addr: "10.0.0.2", State: "alive", Reachable: true, Probe: "310µs", Datapath: "ebpf", Endpoints: 1},
		},
	}
	r := a.ctl(t, "status")
	if r.code != 0 || !strings.Contains(r.stdout, "2 of 2 members alive") || !strings.Contains(r.stdout, "encrypted") {
		t.Errorf("healthy cluster: exit %d\n%s", r.code, r.stdout)
	}
	if strings.Contains(r.stdout, "node2 at") {
		t.Errorf("healthy members are listed only with --verbose:\n%s", r.stdout)
	}
	r = a.ctl(t, "status", "--verbose")
	if r.code != 0 || !strings.Contains(r.stdout, "node2 at 10.0.0.2") || !strings.Contains(r.stdout, "probe 310µs") {
		t.Errorf("--verbose: exit %d\n%s", r.code, r.stdout)
	}
	// A failed member: listed without --verbose, and the agent's warning
	// makes the exit code 1 (degraded).
	a.status.Cluster.Alive = 1
	a.status.Cluster.Members[1].State, a.status.Cluster.Members[1].Reachable = "failed", false
	a.status.Warnings = []string{"cluster member node2 is failed (since 2026-11-23T10:00:00Z)"}
	r = a.ctl(t, "status")
	if r.code != exitFailure || !strings.Contains(r.stdout, "failed  node2 at 10.0.0.2") || !strings.Contains(r.stdout, "1 failed or left") {
		t.Errorf("degraded cluster: exit %d (want 1)\n%s", r.code, r.stdout)
	}
	// Unreachable agent: exit 2; with -o json a JSON object says so.
	if r := runCtl(t, "--socket", filepath.Join(t.TempDir(), "none"), "status"); r.code != 2 {
		t.Errorf("unreachable agent: exit %d, want 2", r.code)
	}
	r = runCtl(t, "--socket", filepath.Join(t.TempDir(), "none"), "-o", "json", "status")
	var down struct{ Error, Code, Socket string }
	if r.code != 2 || json.Unmarshal([]byte(r.stdout), &down) != nil || down.Code != "unreachable" || down.Socket == "" {
		t.Errorf("status -o json, agent unreachable: exit %d, stdout %q", r.code, r.stdout)
	}
}

func TestVersion(t *testing.T) {
	a := newFakeAgent(t)
	r := a.ctl(t, "version")
	if r.code != 0 || !strings.Contains(r.stdout, "fabricctl "+version) || !strings.Contains(r.stdout, "fabricd 1.0.0") {
		t.Errorf("version: exit %d, %q", r.code, r.stdout)
	}
	// Without an agent: the client's version, and exit 2 like every
	// command that needs the agent.
	r = runCtl(t, "--socket", filepath.Join(t.TempDir(), "none"), "version")
	if r.code != exitUnreachable || !strings.Contains(r.stdout, "unreachable") || !strings.Contains(r.stdout, "fabricctl "+version) {
		t.Errorf("version without agent: exit %d, %q", r.code, r.stdout)
	}
	r = runCtl(t, "--socket", filepath.Join(t.TempDir(), "none"), "-o", "json", "version")
	var info versionInfo
	if r.code != exitUnreachable || json.Unmarshal([]byte(r.stdout), &info) != nil || info.Client != version || info.AgentError == "" {
		t.Errorf("version -o json without agent: exit %d, %q", r.code, r.stdout)
	}
	// --version needs no agent.
	r = runCtl(t, "--socket", filepath.Join(t.TempDir(), "none"), "--version")
	if r.code != 0 || r.stdout != "fabricctl "+version+"\n" {
		t.Errorf("--version: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}
}

func TestBadPortRejectedLocally(t *testing.T) {
	a := newFakeAgent(t)
	for _, p := range []string{"80", "0:80", "8080:80/sctp", "example.com:80:80"} {
		r := a.ctl(t, "run", "-d", "-p", p, "--", "true")
		if r.code != exitFailure || !strings.Contains(r.stderr, "bad port mapping") {
			t.Errorf("-p %s: exit %d, stderr %q", p, r.code, r.stderr)
		}
	}
	if got := a.received(); len(got) != 0 {
		t.Errorf("agent contacted: %v", a.summary())
	}
}

func TestUsageErrors(t *testing.T) {
	a := newFakeAgent(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run"}, "needs a command to run"},
		{[]string{"run", "-d", "--name", "x"}, "put CMD after --"},
		{[]string{"network", "create"}, "NAME"},
		{[]string{"network", "connect", "blue"}, "NETWORK SANDBOX"},
		{[]string{"-o", "xml", "network", "ls"}, "unknown output format"},
		{[]string{"network", "frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"sandbox", "ls", "--bogus"}, "unknown flag"},
	} {
		r := a.ctl(t, tc.args...)
		if r.code != exitFailure || !strings.Contains(r.stderr, tc.want) || !strings.Contains(r.stderr, "--help") {
			t.Errorf("%v: exit %d, stderr %q; want %q and a --help hint", tc.args, r.code, r.stderr, tc.want)
		}
	}
	if got := a.received(); len(got) != 0 {
		t.Errorf("agent contacted: %v", a.summary())
	}
}

func TestRunForegroundHostModeExitCode(t *testing.T) {
	a := newFakeAgent(t)
	r := a.ctl(t, "run", "--network", "host", "--", "sh", "-c", "echo hello; exit 3")
	if r.code != 3 {
		t.Fatalf("exit %d, want the command's 3; stderr %q", r.code, r.stderr)
	}
	if r.stdout != "hello\n" || r.stderr != "" {
		t.Errorf("stdout %q stderr %q", r.stdout, r.stderr)
	}
	var create api.SandboxCreate
	decode(t, a.find(t, "POST", "/v1/sandboxes"), &create)
	if create.Command != nil || create.Network != "host" {
		t.Errorf("foreground create must not carry the command: %+v", create)
	}
	var p api.SandboxProcess
	decode(t, a.find(t, "PUT", "/v1/sandboxes/gen-1/process"), &p)
	if p.PID <= 0 {
		t.Errorf("reported PID %d", p.PID)
	}
	for _, req := range a.received() {
		if req.Method == "DELETE" {
			t.Errorf("removed the sandbox without --rm: %v", a.summary())
		}
	}
}

func TestRunForegroundRmRemovesAfterwards(t *testing.T) {
	a := newFakeAgent(t)
	r := a.ctl(t, "run", "--rm", "--name", "tmp", "--network", "host", "--", "sh", "-c", "exit 0")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	got := a.summary()
	want := []string{"POST /v1/sandboxes", "PUT /v1/sandboxes/tmp/process", "DELETE /v1/sandboxes/tmp"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("requests %v, want %v", got, want)
	}
	var create api.SandboxCreate
	decode(t, a.find(t, "POST", "/v1/sandboxes"), &create)
	if !create.AutoRemove {
		t.Errorf("--rm not sent as auto_remove: %+v", create)
	}
}

func TestRunForegroundKilledBySignal(t *testing.T) {
	a := newFakeAgent(t)
	r := a.ctl(t, "run", "--network", "host", "--", "sh", "-c", "kill -TERM $$")
	if r.code != 128+15 {
		t.Errorf("exit %d, want 143", r.code)
	}
}

func TestRunForegroundForwardsSignals(t *testing.T) {
	a := newFakeAgent(t)
	ready := filepath.Join(t.TempDir(), "ready")
	go func() {
		// Once the command has its trap in place, signal fabricctl (this
		// process) as an operator's `kill` would; the command must get it.
		for range 500 {
			if _, err := os.Stat(ready); err == nil {
				syscall.Kill(os.Getpid(), syscall.SIGTERM)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	script := "trap 'exit 42' TERM; touch " + ready + "; i=0; while [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; exit 9"
	r := a.ctl(t, "run", "--network", "host", "--", "sh", "-c", script)
	if r.code != 42 {
		t.Errorf("exit %d, want 42 from the command's TERM trap", r.code)
	}
}

func TestRunForegroundStartFailure(t *testing.T) {
	a := newFakeAgent(t)
	r := a.ctl(t, "run", "--rm", "--name", "nf", "--network", "host", "--", "/nonexistent/fabric-test-cmd")
	if r.code != exitNotFound || !strings.Contains(r.stderr, "Error: start /nonexistent/fabric-test-cmd") {
		t.Errorf("missing command: exit %d, stderr %q", r.code, r.stderr)
	}
	a.find(t, "DELETE", "/v1/sandboxes/nf")

	// A namespace that cannot be entered: nothing runs, the sandbox is
	// still removed. (Not being root, or a path that does not exist, both
	// fail before the fork.)
	a.netns = filepath.Join(t.TempDir(), "no-such-netns")
	r = a.ctl(t, "run", "--rm", "--name", "ns", "--", "sh", "-c", "exit 0")
	if r.code != exitFailure || !strings.Contains(r.stderr, "netns") {
		t.Errorf("bad netns: exit %d, stderr %q", r.code, r.stderr)
	}
	a.find(t, "DELETE", "/v1/sandboxes/ns")
	for _, req := range a.received() {
		if req.Method == "PUT" {
			t.Errorf("reported a PID although nothing started: %v", a.summary())
		}
	}
}

func TestRunForegroundInNamespace(t *testing.T) {
	// A namespace of its own: the command must be born inside it, and
	// fabricctl must stay where it was.
	_, path := netnstest.New(t, "fctl")
	id, err := netns.IDOf(path)
	if err != nil {
		t.Fatal(err)
	}
	before, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	a := newFakeAgent(t)
	a.netns = path
	r := a.ctl(t, "run", "--", "sh", "-c", "readlink /proc/self/ns/net; exit 7")
	if r.code != 7 {
		t.Errorf("exit %d, want 7; stderr %q", r.code, r.stderr)
	}
	if want := fmt.Sprintf("net:[%d]\n", id.Ino); r.stdout != want || want == before+"\n" {
		t.Errorf("command ran in %q, want %q", r.stdout, want)
	}
	if after, _ := os.Readlink("/proc/thread-self/ns/net"); after != before {
		t.Errorf("test thread moved from %s to %s", before, after)
	}
}

func TestHelpDocumentsOptClash(t *testing.T) {
	r := runCtl(t, "network", "create", "--help")
	if r.code != 0 || !strings.Contains(r.stdout, "-o, --opt") || !strings.Contains(r.stdout, "--output json") {
		t.Errorf("network create --help: %q", r.stdout)
	}
	r = runCtl(t, "run", "--help")
	if !strings.Contains(r.stdout, "-- CMD [ARG...]") || !strings.Contains(r.stdout, "-p, --publish") {
		t.Errorf("run --help: %q", r.stdout)
	}
}
