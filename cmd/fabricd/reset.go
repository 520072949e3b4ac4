package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/agent"
	"github.com/fabricnet/fabric/cmd/internal/config"
	"github.com/fabricnet/fabric/datapath/ebpf"
	"github.com/spf13/pflag"
)

// resetMain is `fabricd reset`: remove every piece of kernel state the
// agent leaves in place when it stops (on purpose: traffic keeps flowing
// and a restart is lossless). It reads the same config and flags as the
// agent, so it finds the same state dir, socket and bpf root.
func resetMain(args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("fabricd reset", pflag.ContinueOnError)
	fs.SortFlags = false
	config.RegisterFlags(fs)
	purge := fs.Bool("purge-state", false, "also remove the state directory (records and command logs): nothing of fabric is left")
	fs.Usage = func() {
		fmt.Fprintf(stderr, `Usage: fabricd reset [--purge-state] [flags]

Removes what fabric leaves in the kernel when the agent stops, for an
uninstall or a clean start: stops the sandboxes' commands, removes the
sandboxes' namespaces and their /etc/netns entries, every link fabric made
(bridges, veths, VXLAN, fabric-gw, fabric-vx, VLAN sub-interfaces it
created, shims), the nftables tables "fabric" and "fabric_shims", and every
eBPF program and map pinned under the bpf root (tc and XDP programs and the
cgroup socket hooks are detached). The agent must be stopped first (systemctl stop fabricd).
The records in the state directory stay unless --purge-state, so a started
agent re-creates the networks.

Flags:
%s`, fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "fabricd reset: %v\n", err)
		return 2
	}
	cfg, err := config.Load(fs)
	if err != nil {
		fmt.Fprintf(stderr, "fabricd reset: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.SlogLevel()}))
	if c, err := net.DialTimeout("unix", cfg.Socket, time.Second); err == nil {
		c.Close()
		fmt.Fprintf(stderr, "fabricd reset: an agent is serving %s: stop it first (systemctl stop fabricd)\n", cfg.Socket)
		return 1
	}
	var errs []error
	n, err := agent.ResetSandboxes(cfg.StateDir, log)
	errs = append(errs, err)
	errs = append(errs, ebpf.Purge("", cfg.BPFRoot))
	if *purge {
		errs = append(errs, removeStateDir(cfg.StateDir))
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintf(stderr, "fabricd reset: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "fabric reset: %d sandbox %s removed; links, nftables table and eBPF pins under %s removed", n, plural(n, "namespace", "namespaces"), cfg.BPFRoot)
	if *purge {
		fmt.Fprintf(stdout, "; state %s removed", cfg.StateDir)
	}
	fmt.Fprintln(stdout)
	return 0
}

// removeStateDir removes the agent's state directory, but only one that
// looks like it (holds state.db or is empty): a mistyped --state-dir must
// not take something else with it.
func removeStateDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "state.db")); err != nil && len(entries) > 0 {
		return fmt.Errorf("state dir %s holds no state.db, not removing it: %w", dir, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove state dir: %w", err)
	}
	return nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
