// Package testbin builds the fabricd and fabricctl binaries that
// integration tests run, once per test binary (from its TestMain).
package testbin

import (
	"fmt"
	"os"
	"os/exec"
)

// Build compiles fabricd and fabricctl into a new temporary directory named
// after pattern (os.MkdirTemp) and returns it; the caller removes it. The
// compiler's output goes to the test's stdout and stderr.
func Build(pattern string) (string, error) {
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		return "", err
	}
	build := exec.Command("go", "build", "-o", dir, "github.com/fabricnet/fabric/cmd/fabricd", "github.com/fabricnet/fabric/cmd/fabricctl")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("build binaries: %w", err)
	}
	return dir, nil
}
