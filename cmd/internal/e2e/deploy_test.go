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

const repoRoot = "../../.."

// The example config must load, and must document every key the agent has.
func TestExampleConfigIsValidAndComplete(t *testing.T) {
	path := filepath.Join(repoRoot, "deploy", "fabric.yaml")
	fs := pflag.NewFlagSet("fabricd", pflag.ContinueOnError)
	config.RegisterFlags(fs)
	if err := fs.Parse([]string{"--config", path, "--node-name", "example"}); err != nil {
		t.Fatal(err)
	}
	if _, err := config.Load(fs); err != nil {
		t.Fatalf("example config does not load: %v", err)
	}
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name == "config" {
			return
		}
		if !regexp.MustCompile(`(?m)^#? ?` + regexp.QuoteMeta(f.Name) + `:`).Match(text) {
			t.Errorf("deploy/fabric.yaml does not document key %q", f.Name)
		}
	})
}

func TestSystemdUnitVerifies(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("skipping: systemd-analyze is not installed")
	}
	if binDir == "" {
		t.Skip("skipping: needs root (the binaries are built only for the root suite)")
	}
	unit, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "fabricd.service"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	text := strings.ReplaceAll(string(unit), "/usr/local/bin/fabricd", filepath.Join(binDir, "fabricd"))
	p := filepath.Join(dir, "fabricd.service")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("systemd-analyze", "verify", p).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// make install into a DESTDIR puts every file in place; make uninstall
// takes every one of them away again.
func TestMakeInstallAndUninstallLeaveNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: builds the binaries")
	}
	dest := t.TempDir()
	run(t, "make", "-C", repoRoot, "install", "DESTDIR="+dest)
	for _, f := range []string{"usr/local/bin/fabricd", "usr/local/bin/fabricctl", "etc/systemd/system/fabricd.service", "etc/fabric/fabric.yaml", "usr/local/share/doc/fabric/README.md", "opt/cni/bin/fabric-cni", "usr/local/share/doc/fabric/cni/10-fabric.conflist"} {
		if _, err := os.Stat(filepath.Join(dest, f)); err != nil {
			t.Errorf("make install: %v", err)
		}
	}
	run(t, "make", "-C", repoRoot, "uninstall", "DESTDIR="+dest)
	_ = filepath.Walk(dest, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			t.Errorf("left after make uninstall: %s", strings.TrimPrefix(p, dest))
		}
		return nil
	})
}
