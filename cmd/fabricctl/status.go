package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/spf13/cobra"
)

func newStatusCmd(c *cli) *cobra.Command {
	var verbose, brief bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show whether the agent runs, its datapath and what it manages",
		Long: `Show the state of fabricd on this host: whether it answers, its version,
node name and uptime, the datapath in use (ebpf or kernel) with details
such as attached programs, the number of networks, sandboxes and
endpoints, the cluster (every member with its state, underlay address,
datapath, version and endpoint count) and any warnings (for example a
fallback from eBPF to the kernel datapath, or a cluster member that failed).

Each peer is probed over the underlay every 5 s; --verbose lists every
member with the probe's round trip, otherwise only members that failed or
do not answer are listed.

Exit code: 0 all well, 1 the agent reports warnings (degraded: a failed
member counts), 2 the agent is unreachable. That makes it usable as a health check.`,
		Example: `  fabricctl status
  fabricctl status --verbose
  fabricctl status -o json
  fabricctl status --brief
  fabricctl --socket /tmp/fabricd.sock status || echo "fabric is not healthy"`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := c.client().Status(cmd.Context())
			if err == nil {
				st.Warnings = append(st.Warnings, insecureGossipWarning(st)...)
			}
			if brief && !c.json() {
				return briefStatus(cmd.OutOrStdout(), c.socket, st, err)
			}
			if err != nil && c.json() && errors.Is(err, api.ErrUnreachable) {
				// Scripts reading -o json get an object saying so, not an
				// empty stdout; the exit code is still 2.
				if werr := c.emit(cmd.OutOrStdout(), unreachableStatus{Error: err.Error(), Code: "unreachable", Socket: c.socket}); werr != nil {
					return werr
				}
			}
			if err != nil {
				return explain(err, "get status")
			}
			out := cmd.OutOrStdout()
			if err := c.render(out, st, func(w io.Writer) error {
				return statusText(w, c.socket, st, verbose)
			}); err != nil {
				return err
			}
			if len(st.Warnings) > 0 {
				return &exitError{code: exitFailure}
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "list every cluster member with its probe round trip (default: only members in trouble)")
	cmd.Flags().BoolVar(&brief, "brief", false, "one line for scripts: healthy|degraded|unreachable and the counts (same exit codes)")
	return cmd
}

// insecureGossipWarning warns about an agent that gossips without a key
// (fabricd --cluster-insecure) where others can reach it: anyone who can
// send to its gossip port can rewrite the cluster's state.
func insecureGossipWarning(st api.Status) []string {
	cl := st.Cluster
	if cl == nil || cl.Encrypted {
		return nil
	}
	if ap, err := netip.ParseAddrPort(cl.Gossip); err == nil && ap.Addr().IsLoopback() {
		return nil // a loopback-only cluster: nobody else can reach it
	}
	return []string{fmt.Sprintf("cluster gossip on %s is neither encrypted nor authenticated (--cluster-insecure): anyone who reaches that port can rewrite the cluster; "+
		"create a key with `fabricctl cluster key generate FILE`, give it to every node with --cluster-secret-file and restart them", cl.Gossip)}
}

// briefStatus prints status --brief's one line and returns the exit code
// status always has.
func briefStatus(w io.Writer, socket string, st api.Status, err error) error {
	if errors.Is(err, api.ErrUnreachable) {
		fmt.Fprintf(w, "unreachable socket=%s\n", socket)
		return &exitError{code: exitUnreachable}
	}
	if err != nil {
		return explain(err, "get status")
	}
	state := "healthy"
	if len(st.Warnings) > 0 {
		state = "degraded"
	}
	line := fmt.Sprintf("%s node=%s datapath=%s networks=%d sandboxes=%d endpoints=%d warnings=%d",
		state, st.Node, st.Datapath, st.Networks, st.Sandboxes, st.Endpoints, len(st.Warnings))
	if cl := st.Cluster; cl != nil {
		line += fmt.Sprintf(" members=%d/%d", cl.Alive, len(cl.Members))
	}
	if _, err := fmt.Fprintln(w, line); err != nil {
		return err
	}
	if len(st.Warnings) > 0 {
		return &exitError{code: exitFailure}
	}
	return nil
}

// unreachableStatus is what `status -o json` prints when the agent does
// not answer: the API's error shape plus the socket that was tried.
type unreachableStatus struct {
	Error  string `json:"error"`
	Code   string `json:"code"`
	Socket string `json:"socket"`
}

// versionInfo is what `fabricctl version -o json` prints.
type versionInfo struct {
	Client string `json:"client"`
	Agent  string `json:"agent,omitempty"`
	Node   string `json:"node,omitempty"`
	// AgentError says why the agent's version is missing.
	AgentError string `json:"agent_error,omitempty"`
}

func newVersionCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Show the client's and the agent's versions",
		Long: `Show the version of fabricctl and, if the agent answers, of fabricd.
If the agent does not answer, the client's version is still printed, and
the command exits 2 like every other command (as 'docker version' fails
without its daemon). 'fabricctl --version' prints the client's version
alone and needs no agent.`,
		Example: `  fabricctl version
  fabricctl version -o json`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			info := versionInfo{Client: version}
			st, err := c.client().Status(cmd.Context())
			switch {
			case err == nil:
				info.Agent, info.Node = st.Version, st.Node
			case errors.Is(err, api.ErrUnreachable):
				info.AgentError = "unreachable at " + c.socket
			default:
				return explain(err, "get agent version")
			}
			if c.json() {
				if err := c.emit(cmd.OutOrStdout(), info); err != nil || info.AgentError == "" {
					return err
				}
				return &exitError{code: exitUnreachable}
			}
			agent := "fabricd " + info.Agent + " (node " + info.Node + ")"
			if info.AgentError != "" {
				agent = info.AgentError
			}
			if _, err := fmt.Fprintf(cmd.OutOrStdout(), "Client: fabricctl %s\nAgent:  %s\n", info.Client, agent); err != nil {
				return err
			}
			if info.AgentError != "" {
				return &exitError{code: exitUnreachable}
			}
			return nil
		},
	}
}
