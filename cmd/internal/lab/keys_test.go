package lab_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fabricd refuses to join a cluster without a gossip key, and refuses a
// key file others can read, each saying how to fix it; nothing starts.
func TestFabricdRefusesUnsafeGossip(t *testing.T) {
	if binDir == "" {
		t.Skip("skipping: needs root (the binaries are built only for the root suite)")
	}
	dir := t.TempDir()
	key := filepath.Join(dir, "gossip.key")
	if out, err := exec.Command(filepath.Join(binDir, "fabricctl"), "cluster", "key", "generate", key).CombinedOutput(); err != nil {
		t.Fatalf("generate: %v: %s", err, out)
	}
	fabricd := func(args ...string) (int, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		// In a namespace of its own: were it to start after all, it could
		// not touch the host.
		base := []string{"--net", filepath.Join(binDir, "fabricd"), "--config", os.DevNull,
			"--state-dir", filepath.Join(dir, "state"), "--socket", filepath.Join(dir, "sock"), "--bpf-root", filepath.Join(dir, "bpf"),
			"--datapath", "kernel", "--node-name", "refused", "--cluster-bind", "127.0.0.1:7946", "--metrics-listen", ""}
		cmd := exec.CommandContext(ctx, "unshare", append(base, args...)...)
		cmd.Env = withoutFabricEnv(os.Environ())
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		t.Logf("fabricd %q: exit %d\n%s", args, code, out)
		return code, string(out)
	}
	code, out := fabricd("--cluster-join", "127.0.0.1:9")
	if code != 2 || !strings.Contains(out, "fabricctl cluster key generate") || !strings.Contains(out, "cluster-insecure") {
		t.Errorf("clustered without a key: exit %d, want 2 with how to make a key", code)
	}
	if err := os.Chmod(key, 0o640); err != nil {
		t.Fatal(err)
	}
	code, out = fabricd("--cluster-join", "127.0.0.1:9", "--cluster-secret-file", key)
	if code == 0 || !strings.Contains(out, key) || !strings.Contains(out, "chmod 600") {
		t.Errorf("key readable by group: exit %d, want an error naming the file and chmod 600", code)
	}
	if _, err := os.Stat(filepath.Join(dir, "sock")); err == nil {
		t.Error("a refused agent created its socket")
	}
}
