package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/spf13/cobra"
)

// defaultNetwork is the agent's default network, never pruned.
const defaultNetwork = "bridge"

func newNetworkPruneCmd(c *cli) *cobra.Command {
	return pruneCmd(c, &cobra.Command{
		Use:   "prune [OPTIONS]",
		Short: "Remove every local network without endpoints",
		Long: `Remove every network of this host that no sandbox is connected to, except
the default network "bridge", and print the name of each one removed.
Overlay networks are cluster-wide and are left alone (remove one with
'network rm' when no host uses it). Asks first unless -f.`,
		Example: `  fabricctl network prune
  fabricctl network prune -f`,
	}, pruning{
		what:   "every local network without endpoints (not \"bridge\")",
		kind:   "network",
		list:   unusedLocalNetworks,
		remove: (*api.Client).RemoveNetwork,
	})
}

// unusedLocalNetworks names the networks network prune removes.
func unusedLocalNetworks(cl *api.Client, ctx context.Context) ([]string, error) {
	nets, err := cl.Networks(ctx)
	if err != nil {
		return nil, explain(err, "list networks")
	}
	var names []string
	for _, n := range nets {
		if n.Endpoints == 0 && n.Name != defaultNetwork && n.Scope != "cluster" && n.Driver != "overlay" {
			names = append(names, n.Name)
		}
	}
	return names, nil
}

func newSandboxPruneCmd(c *cli) *cobra.Command {
	return pruneCmd(c, &cobra.Command{
		Use:   "prune [OPTIONS]",
		Short: "Remove every sandbox whose command has exited",
		Long: `Remove every sandbox whose command has exited (state "exited"), with its
endpoints, addresses, namespace and log, and print the name of each one
removed. Sandboxes without a command (state "created") and running ones
stay. Asks first unless -f.`,
		Example: `  fabricctl sandbox prune
  fabricctl sandbox prune -f`,
	}, pruning{
		what:   "every sandbox whose command has exited",
		kind:   "sandbox",
		list:   exitedSandboxes,
		remove: (*api.Client).RemoveSandbox,
	})
}

// exitedSandboxes names the sandboxes sandbox prune removes.
func exitedSandboxes(cl *api.Client, ctx context.Context) ([]string, error) {
	sbs, err := cl.Sandboxes(ctx)
	if err != nil {
		return nil, explain(err, "list sandboxes")
	}
	var names []string
	for _, s := range sbs {
		if s.State == api.StateExited {
			names = append(names, s.Name)
		}
	}
	return names, nil
}

// pruning is what a prune command removes: the names list returns, what
// describes them in the question, kind names one in errors.
type pruning struct {
	what, kind string
	list       func(*api.Client, context.Context) ([]string, error)
	remove     func(*api.Client, context.Context, string) error
}

// pruneCmd makes cmd (its Use, Short, Long and Example set) the prune
// command of p: it lists, confirms (unless -f) and removes one by one.
func pruneCmd(c *cli, cmd *cobra.Command, p pruning) *cobra.Command {
	var force bool
	cmd.Args = exactArgs()
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cl := c.client()
		names, err := p.list(cl, cmd.Context())
		if err != nil {
			return err
		}
		if len(names) == 0 {
			return nil
		}
		if !force {
			ok, err := confirm(cmd.InOrStdin(), cmd.ErrOrStderr(), fmt.Sprintf("This removes %s: %s.\nAre you sure you want to continue? [y/N] ", p.what, strings.Join(names, ", ")))
			if err != nil {
				return err
			}
			if !ok {
				return &exitError{code: exitFailure, err: errors.New("not confirmed; nothing removed (-f skips the question)")}
			}
		}
		return removeEach(cmd, names, p.kind, func(ctx context.Context, name string) error { return p.remove(cl, ctx, name) })
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "do not ask")
	return cmd
}

// confirm asks question on w and reads a yes from r.
func confirm(r io.Reader, w io.Writer, question string) (bool, error) {
	fmt.Fprint(w, question)
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("read answer: %w", err)
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true, nil
	}
	return false, nil
}
