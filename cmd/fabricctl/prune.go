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
	}, pruning[api.Network]{
		items: networkListing,
		what:  "every local network without endpoints (not \"bridge\")",
		kind:  "network",
		pick: func(n api.Network) bool {
			return n.Endpoints == 0 && n.Name != defaultNetwork && n.Scope != "cluster" && n.Driver != "overlay"
		},
		remove: (*api.Client).RemoveNetwork,
	})
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
	}, pruning[api.Sandbox]{
		items:  sandboxListing,
		what:   "every sandbox whose command has exited",
		kind:   "sandbox",
		pick:   func(s api.Sandbox) bool { return s.State == api.StateExited },
		remove: (*api.Client).RemoveSandbox,
	})
}

// pruning is what a prune command removes: the items pick picks, of those
// items fetches; what describes them in the question, kind names one in
// errors.
type pruning[T any] struct {
	items      listing[T]
	what, kind string
	pick       func(T) bool
	remove     func(*api.Client, context.Context, string) error
}

// pruneCmd makes cmd (its Use, Short, Long and Example set) the prune
// command of p: it lists, confirms (unless -f) and removes one by one.
func pruneCmd[T any](c *cli, cmd *cobra.Command, p pruning[T]) *cobra.Command {
	var force bool
	cmd.Args = exactArgs()
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cl := c.client()
		items, err := p.items.fetch(cl, cmd.Context())
		if err != nil {
			return explain(err, "list %s", p.items.kind)
		}
		var names []string
		for _, it := range items {
			if p.pick(it) {
				names = append(names, p.items.name(it))
			}
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
