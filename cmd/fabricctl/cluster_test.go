package main

import (
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// An agent gossiping without a key where others can reach it is a
// warning: status says how to fix it and exits 1.
func TestStatusWarnsInsecureGossip(t *testing.T) {
	a := newFakeAgent(t)
	a.status.Cluster = &api.ClusterStatus{Node: "node1", Gossip: "10.0.0.1:7946", Alive: 1, Encrypted: false,
		Members: []api.Member{{Name: "node1", Addr: "10.0.0.1", State: "alive", Reachable: true}}}
	r := a.ctl(t, "status")
	if r.code != exitFailure || !strings.Contains(r.stdout, "--cluster-insecure") || !strings.Contains(r.stdout, "fabricctl cluster key generate") {
		t.Errorf("insecure gossip: exit %d (want 1)\n%s", r.code, r.stdout)
	}
	a.status.Cluster.Encrypted = true
	if r := a.ctl(t, "status"); r.code != 0 || strings.Contains(r.stdout, "--cluster-insecure") {
		t.Errorf("encrypted gossip: exit %d\n%s", r.code, r.stdout)
	}
	// A loopback-only cluster is reachable by nobody else.
	a.status.Cluster.Encrypted, a.status.Cluster.Gossip = false, "127.0.0.1:7946"
	if r := a.ctl(t, "status"); r.code != 0 {
		t.Errorf("loopback gossip: exit %d\n%s", r.code, r.stdout)
	}
}

func TestClusterKeyGenerate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gossip.key")
	r := runCtl(t, "cluster", "key", "generate", path)
	if r.code != 0 {
		t.Fatalf("generate: exit %d: %s", r.code, r.stderr)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v", err, fi.Mode())
	}
	first, _ := os.ReadFile(path)
	if raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(first))); err != nil || len(raw) != 32 {
		t.Fatalf("key %q: %d bytes, %v", first, len(raw), err)
	}
	r = runCtl(t, "cluster", "key", "generate", path)
	if r.code == 0 || !strings.Contains(r.stderr, "--force") {
		t.Errorf("overwrite without --force: exit %d, stderr %q", r.code, r.stderr)
	}
	if again, _ := os.ReadFile(path); string(again) != string(first) {
		t.Error("refused generate changed the file")
	}
	if r := runCtl(t, "cluster", "key", "generate", "--force", path); r.code != 0 {
		t.Fatalf("--force: exit %d", r.code)
	}
	if again, _ := os.ReadFile(path); string(again) == string(first) {
		t.Error("--force kept the old key")
	}
	if r := runCtl(t, "cluster", "key", "generate", "--help"); !strings.Contains(r.stdout, "--force") || !strings.Contains(r.stdout, "0600") {
		t.Errorf("help does not document --force and the mode:\n%s", r.stdout)
	}
}

// The rotation steps still reach the agent.
func TestClusterKeyRotationCommands(t *testing.T) {
	dir, err := os.MkdirTemp("", "fabricctl") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan api.KeyOp, 8)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/cluster/keys", func(w http.ResponseWriter, r *http.Request) {
		var op api.KeyOp
		_ = json.NewDecoder(r.Body).Decode(&op)
		got <- op
		w.WriteHeader(http.StatusNoContent)
	})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	path := filepath.Join(dir, "new.key")
	if r := runCtl(t, "cluster", "key", "generate", path); r.code != 0 {
		t.Fatal("generate failed")
	}
	data, _ := os.ReadFile(path)
	for _, op := range []string{"install", "use", "remove"} {
		if r := runCtl(t, "--socket", sock, "cluster", "key", op, path); r.code != 0 {
			t.Fatalf("key %s: exit %d: %s", op, r.code, r.stderr)
		}
		req := <-got
		if req.Op != op || req.Key != strings.TrimSpace(string(data)) {
			t.Errorf("key %s sent %+v", op, req)
		}
	}
	if r := runCtl(t, "--socket", sock, "cluster", "key", "rotate", path); r.code == 0 {
		t.Error("unknown key operation accepted")
	}
}
