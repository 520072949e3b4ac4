// Package testbin builds the fabricd and fabricctl binaries that
// integration tests run, once per test binary (from its TestMain).
package testbin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"
)

// BinDirEnv names the environment variable that points Main at fabricd
// and fabricctl built beforehand instead of building them.
const BinDirEnv = "FABRIC_TEST_BINDIR"

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

// Main is a TestMain body for tests that run the binaries as root. Not
// root, it prints notRoot and runs the tests without binaries (they skip
// themselves). As root it builds them (Build with pattern), sets *dir,
// runs the tests and removes the binaries (with $FABRIC_TEST_BINDIR set it
// uses the binaries there and keeps them). It returns the exit code.
func Main(m *testing.M, pattern, notRoot string, dir *string) int {
	if os.Geteuid() != 0 {
		fmt.Println(notRoot)
		return m.Run()
	}
	if d := os.Getenv(BinDirEnv); d != "" {
		*dir = d // built already, e.g. by make test-kernels for a guest without a Go toolchain
		return m.Run()
	}
	d, err := Build(pattern)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	*dir = d
	defer os.RemoveAll(d)
	return m.Run()
}

// Run runs the command name with args, killed if it takes longer than
// limit, in the environment env (nil: this process's), and returns what it
// wrote to stdout and stderr and its exit code: -1 if it could not be
// started or was killed.
func Run(limit time.Duration, env []string, name string, args ...string) (stdout, stderr string, code int) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		code = -1
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
	}
	return o.String(), e.String(), code
}
