package main

import (
	"context"
	"fmt"
	"io"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/spf13/cobra"
)

func newSandboxCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "sandbox",
		Aliases: []string{"sb"},
		Short:   "List, inspect and remove sandboxes",
		Long: `Manage sandboxes. A sandbox is a network namespace, i.e. a container's
network stack, with one endpoint per network it is connected to. Sandboxes
made by 'fabricctl run' live at /var/run/netns/NAME, so
'ip netns exec NAME …' works on them (an agent started with --netns-prefix P,
as every lab node is, puts them at /var/run/netns/PNAME: see the NETNS of
'sandbox inspect'). Namespaces wired in by path with
'network connect' show up in mode "external".`,
		Example: `  fabricctl sandbox ls
  fabricctl sandbox inspect web
  fabricctl sandbox rm web`,
		Args: noSubcommand,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newSandboxLsCmd(c), newSandboxInspectCmd(c), newSandboxRmCmd(c), newSandboxPruneCmd(c))
	return cmd
}

func newSandboxLsCmd(c *cli) *cobra.Command {
	return listCmd(c, &cobra.Command{
		Use:     "ls [OPTIONS]",
		Aliases: []string{"list", "ps"},
		Short:   "List sandboxes",
		Long: `List sandboxes with their mode (netns, none, host, container:NAME,
external), state (created, running, exited (CODE)), the PID of their
command, their address on each network as NETWORK=IP, and their published
ports as HOSTIP:HOSTPORT->PORT/PROTO.`,
		Example: `  fabricctl sandbox ls
  fabricctl sandbox ls -q
  fabricctl sandbox ls -o json
  fabricctl sandbox ls --filter state=exited --format '{{.Name}} {{.State}} {{.PID}}'`,
	}, sandboxListing)
}

// sandboxListing is what sandbox ls and prune know of sandboxes.
var sandboxListing = listing[api.Sandbox]{
	kind:  "sandboxes",
	fetch: (*api.Client).Sandboxes,
	sort:  sortSandboxes,
	name:  func(s api.Sandbox) string { return s.Name },
	table: sandboxTable,
}

func newSandboxInspectCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect NAME...",
		Short: "Show sandboxes in detail (JSON)",
		Long: `Print one or more sandboxes as a JSON array: namespace path, command,
PID, state and exit code, published ports, aliases and every endpoint with
its interface names, address and MAC. Always JSON, whatever --output says.`,
		Example: `  fabricctl sandbox inspect web
  nsenter --net="$(fabricctl sandbox inspect web | jq -r '.[0].netns')" ip route`,
		Args: minArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return inspectEach(cmd, args, "sandbox", c.client().Sandbox)
		},
	}
}

func newSandboxRmCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"remove"},
		Short:   "Remove sandboxes",
		Long: `Remove one or more sandboxes and print the name of each one removed. The
agent stops the sandbox's command if it still runs, removes its endpoints
(interfaces, addresses, published ports, DNS names) and its namespace.
An external namespace (connected by path) is only unwired, never deleted.`,
		Example: `  fabricctl sandbox rm web
  fabricctl sandbox rm $(fabricctl sandbox ls -q)`,
		Args: minArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return removeEach(cmd, args, "sandbox", c.client().RemoveSandbox)
		},
	}
}

func newEndpointCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "endpoint",
		Aliases: []string{"ep"},
		Short:   "List endpoints (the links between sandboxes and networks)",
		Long: `Endpoints connect a sandbox to a network: one interface inside the sandbox
(IFNAME), its peer on the host (HOST-IF, for veth pairs), one address and
one MAC. They are made by 'run' and 'network connect' and removed with
their sandbox or by 'network disconnect'.`,
		Example: `  fabricctl endpoint ls`,
		Args:    noSubcommand,
		RunE:    func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(&cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List endpoints",
		Long: `List every endpoint: sandbox, network, interface name in the sandbox,
address (CIDR), MAC address and the host-side interface. Use the host-side
name with tcpdump -i or 'ip link show' on the host.`,
		Example: `  fabricctl endpoint ls
  fabricctl endpoint ls -o json | jq -r '.[] | select(.network=="blue") | .ip'`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			eps, err := c.client().Endpoints(cmd.Context())
			if err != nil {
				return explain(err, "list endpoints")
			}
			if eps == nil {
				eps = []api.Endpoint{}
			}
			sortEndpoints(eps)
			return c.render(cmd.OutOrStdout(), eps, func(w io.Writer) error { return endpointTable(w, eps) })
		},
	})
	return cmd
}

// inspectEach fetches every named object and prints them as one JSON array,
// continuing past names that fail (like docker inspect).
func inspectEach[T any](cmd *cobra.Command, args []string, kind string, get func(context.Context, string) (T, error)) error {
	found := []T{}
	err := eachName(args, cmd.ErrOrStderr(), func(name string) error {
		v, err := get(cmd.Context(), name)
		if err != nil {
			return explain(err, "inspect %s %s", kind, name)
		}
		found = append(found, v)
		return nil
	})
	if codeOf(err) == exitUnreachable {
		return err
	}
	if werr := writeJSON(cmd.OutOrStdout(), found); werr != nil {
		return werr
	}
	return err
}

// removeEach removes every named object, printing each name removed.
func removeEach(cmd *cobra.Command, args []string, kind string, remove func(context.Context, string) error) error {
	return eachName(args, cmd.ErrOrStderr(), func(name string) error {
		if err := remove(cmd.Context(), name); err != nil {
			return explain(err, "remove %s %s", kind, name)
		}
		_, err := fmt.Fprintln(cmd.OutOrStdout(), name)
		return err
	})
}
