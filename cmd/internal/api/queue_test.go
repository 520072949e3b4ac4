package api

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestQueueRemoval(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "fabricd.sock")
	q := QueuedRemoval{Sandbox: "cni-0123", Owner: OwnerCNI, ContainerID: "c1", Queued: time.Unix(1, 0).UTC()}
	if err := QueueRemoval(sock, q); err != nil {
		t.Fatal(err)
	}
	dir := RemovalQueueDir(sock)
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != "cni-0123.json" {
		t.Fatalf("queue holds %v, want only cni-0123.json (no temporary file left)", ents)
	}
	var got QueuedRemoval
	b, _ := os.ReadFile(filepath.Join(dir, "cni-0123.json"))
	if err := json.Unmarshal(b, &got); err != nil || got != q {
		t.Errorf("queued %+v (%v), want %+v", got, err, q)
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("queue dir mode %v, want 0700", st.Mode().Perm())
	}
	for _, bad := range []string{"", "../x", "a/b"} {
		if err := QueueRemoval(sock, QueuedRemoval{Sandbox: bad}); err == nil {
			t.Errorf("sandbox name %q queued", bad)
		}
	}
}
