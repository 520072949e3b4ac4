package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"

	"github.com/spf13/cobra"
)

func newExecCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "exec [OPTIONS] SANDBOX -- CMD [ARG...]",
		Short: "Run a command in an existing sandbox",
		Long: `Run CMD in the network namespace of an existing sandbox, attached to this
terminal, as 'docker exec' does: with the sandbox's resolv.conf (the
embedded DNS server) in place of /etc/resolv.conf, SIGINT, SIGTERM and
SIGHUP passed on, and fabricctl's exit code the command's (128+N if killed
by signal N, 127 if not found, 126 if it could not be run). The sandbox
and its own command are not changed.`,
		Example: `  fabricctl exec web -- ip addr
  fabricctl exec web -- ping -c 1 db
  fabricctl exec web -- sh`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return usageErr(cmd, errors.New(`"fabricctl exec" needs a sandbox and a command: fabricctl exec SANDBOX -- CMD [ARG...]`))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			sigc := make(chan os.Signal, 8)
			signal.Notify(sigc, forwardedSignals...)
			defer signal.Stop(sigc)
			sb, err := c.client().Sandbox(cmd.Context(), args[0])
			if err != nil {
				return explain(err, "get sandbox %s", args[0])
			}
			argv := args[1:]
			if argv[0] == "--" {
				argv = argv[1:]
			}
			if len(argv) == 0 {
				return usageErr(cmd, errors.New(`"fabricctl exec" needs a command after --`))
			}
			stderr := cmd.ErrOrStderr()
			child, nsPath, err := sandboxCommand(sb, argv)
			if err != nil {
				return &exitError{code: startFailureCode(err), err: fmt.Errorf("exec %s in sandbox %s: %w", argv[0], sb.Name, err)}
			}
			child.Stdin, child.Stdout, child.Stderr = cmd.InOrStdin(), cmd.OutOrStdout(), stderr
			if code, err := startIn(nsPath, child, stderr); err != nil {
				return &exitError{code: code, err: fmt.Errorf("exec %s in sandbox %s: %w", argv[0], sb.Name, err)}
			}
			code, err := waitForwarding(child, sigc)
			if err != nil && code == exitOK {
				code = exitFailure
			}
			return &exitError{code: code, err: err}
		},
	}
	cmd.Flags().SetInterspersed(false)
	return cmd
}
