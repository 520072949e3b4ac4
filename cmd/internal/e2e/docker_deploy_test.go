package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/fabricnet/fabric/cmd/internal/config"
	"github.com/spf13/pflag"
)

// The Docker drop-in orders fabricd before docker.service and turns the
// plugin on at the socket Docker looks at, through the config's
// environment variable.
func TestDockerDropIn(t *testing.T) {
	text, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "fabricd-docker.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^Before=docker\.service$`).Match(text) {
		t.Fatal("deploy/fabricd-docker.conf does not start fabricd before docker.service")
	}
	m := regexp.MustCompile(`(?m)^Environment=(FABRIC_[A-Z_]+)=(\S+)$`).FindSubmatch(text)
	if m == nil {
		t.Fatal("deploy/fabricd-docker.conf sets no FABRIC_ variable")
	}
	t.Setenv(string(m[1]), string(m[2]))
	fs := pflag.NewFlagSet("fabricd", pflag.ContinueOnError)
	config.RegisterFlags(fs)
	if err := fs.Parse([]string{"--config", filepath.Join(repoRoot, "deploy", "fabric.yaml"), "--node-name", "example"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(fs)
	if err != nil {
		t.Fatalf("config with the drop-in's environment: %v", err)
	}
	if cfg.DockerPlugin != dockerPluginSock {
		t.Fatalf("the drop-in gives docker-plugin %q, want %q", cfg.DockerPlugin, dockerPluginSock)
	}

	if _, err := exec.LookPath("systemd-analyze"); err != nil || binDir == "" {
		return // the unit check needs systemd-analyze and the built binaries (root suite)
	}
	unit, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "fabricd.service"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "fabricd.service")
	if err := os.WriteFile(p, []byte(strings.ReplaceAll(string(unit), "/usr/local/bin/fabricd", filepath.Join(binDir, "fabricd"))), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(p+".d", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p+".d", "docker.conf"), text, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("systemd-analyze", "verify", p).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify with the drop-in: %v\n%s", err, out)
	}
}
