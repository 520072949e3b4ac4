package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/spf13/cobra"
)

func newLogsCmd(c *cli) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs [OPTIONS] SANDBOX",
		Short: "Print the output of a sandbox's command (run -d)",
		Long: `Print what the command of a sandbox started with 'run -d' wrote to its
stdout and stderr (the agent keeps it in STATE_DIR/logs/NAME.log). With -f,
keep printing what it writes until the command exits or you press Ctrl-C.
A foreground 'run' writes to your terminal instead and has no log. Reading
the log needs the same rights as the agent's state directory (root).`,
		Example: `  fabricctl logs web
  fabricctl logs -f web`,
		Args: exactArgs("SANDBOX"),
		RunE: func(cmd *cobra.Command, args []string) error {
			sb, err := c.client().Sandbox(cmd.Context(), args[0])
			if err != nil {
				return explain(err, "get sandbox %s", args[0])
			}
			if sb.LogPath == "" {
				return fmt.Errorf("sandbox %s has no log: only commands started with 'run -d' have one", sb.Name)
			}
			f, err := os.Open(sb.LogPath)
			if err != nil {
				return fmt.Errorf("open log of sandbox %s: %w", sb.Name, err)
			}
			defer f.Close()
			out := cmd.OutOrStdout()
			if _, err := io.Copy(out, f); err != nil {
				return fmt.Errorf("read log of sandbox %s: %w", sb.Name, err)
			}
			if !follow {
				return nil
			}
			return followLog(cmd, c.client(), sb.Name, f, out)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until the command exits")
	return cmd
}

// followLog copies what is appended to f until the sandbox's command is no
// longer running (or gone), or an interrupt.
func followLog(cmd *cobra.Command, cl *api.Client, name string, f *os.File, out io.Writer) error {
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, forwardedSignals...)
	defer signal.Stop(sigc)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := io.Copy(out, f); err != nil {
			return fmt.Errorf("read log of sandbox %s: %w", name, err)
		}
		select {
		case <-sigc:
			return nil
		case <-cmd.Context().Done():
			return nil
		case <-tick.C:
		}
		sb, err := cl.Sandbox(cmd.Context(), name)
		var apiErr *api.Error
		if errors.As(err, &apiErr) && apiErr.Code == api.CodeNotFound || err == nil && sb.State != api.StateRunning {
			_, err := io.Copy(out, f) // the last words
			return err
		}
		if err != nil {
			return explain(err, "get sandbox %s", name)
		}
	}
}
