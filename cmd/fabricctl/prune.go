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
	var force bool
	cmd := &cobra.Command{
		Use:   "prune [OPTIONS]",
		Short: "Remove every local network without endpoints",
		Long: `Remove every network of this host that no sandbox is connected to, except
the default network "bridge", and print the name of each one removed.
Overlay networks are cluster-wide and are left alone (remove one with
'network rm' when no host uses it). Asks first unless -f.`,
		Example: `  fabricctl network prune
  fabricctl network prune -f`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			nets, err := c.client().Networks(cmd.Context())
			if err != nil {
				return explain(err, "list networks")
			}
			var names []string
			for _, n := range nets {
				if n.Endpoints == 0 && n.Name != defaultNetwork && n.Scope != "cluster" && n.Driver != "overlay" {
					names = append(names, n.Name)
				}
			}
			return prune(cmd, force, "every local network without endpoints (not \"bridge\")", names, "network", c.client().RemoveNetwork)
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "do not ask")
	return cmd
}

func newSandboxPruneCmd(c *cli) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "prune [OPTIONS]",
		Short: "Remove every sandbox whose command has exited",
		Long: `Remove every sandbox whose command has exited (state "exited"), with its
endpoints, addresses, namespace and log, and print the name of each one
removed. Sandboxes without a command (state "created") and running ones
stay. Asks first unless -f.`,
		Example: `  fabricctl sandbox prune
  fabricctl sandbox prune -f`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			sbs, err := c.client().Sandboxes(cmd.Context())
			if err != nil {
				return explain(err, "list sandboxes")
			}
			var names []string
			for _, s := range sbs {
				if s.State == api.StateExited {
					names = append(names, s.Name)
				}
			}
			return prune(cmd, force, "every sandbox whose command has exited", names, "sandbox", c.client().RemoveSandbox)
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "do not ask")
	return cmd
}

// prune confirms (unless force) and removes names one by one.
func prune(cmd *cobra.Command, force bool, what string, names []string, kind string, remove func(context.Context, string) error) error {
	if len(names) == 0 {
		return nil
	}
	if !force {
		ok, err := confirm(cmd.InOrStdin(), cmd.ErrOrStderr(), fmt.Sprintf("This removes %s: %s.\nAre you sure you want to continue? [y/N] ", what, strings.Join(names, ", ")))
		if err != nil {
			return err
		}
		if !ok {
			return &exitError{code: exitFailure, err: errors.New("not confirmed; nothing removed (-f skips the question)")}
		}
	}
	return removeEach(cmd, names, kind, remove)
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
