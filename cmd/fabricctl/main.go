// Command fabricctl is the command-line client of fabricd, the agent of the
// fabric container network. It turns Docker-like commands (network create,
// run, sandbox ls, …) into requests on the agent's HTTP+JSON API on its unix
// socket and prints the answers as tables or JSON.
//
// It knows only the API contract (cmd/internal/api) and, to run a foreground
// command inside a sandbox, how to enter a network namespace
// (datapath/netns). It must not know about netlink, eBPF, the store or the
// agent's internals: everything else goes through the API.
//
// Exit codes: 0 success; 1 an error (bad input, a rejection by the agent,
// or `status` reporting warnings); 2 the agent could not be reached. A
// foreground `run` exits with its command's code (128+N when killed by
// signal N, 126/127 when the command cannot be executed / is not found).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/spf13/cobra"
)

// version is the client's version, set at build time with
// -ldflags "-X main.version=1.2.3".
var version = "dev"

// Exit codes shared by every command.
const (
	exitOK          = 0
	exitFailure     = 1
	exitUnreachable = 2
)

// socketEnv overrides api.DefaultSocket as the default of --socket.
const socketEnv = "FABRIC_SOCKET"

func main() {
	os.Exit(execute(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// execute runs fabricctl with args and returns the process exit code. It
// never calls os.Exit, so tests can run the real command tree.
func execute(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := newRootCmd(stdout, stderr)
	root.SetIn(stdin)
	root.SetArgs(args)
	return report(root.ExecuteContext(ctx), stderr)
}

// cli holds the global flags every command shares.
type cli struct {
	socket string
	output string
}

func (c *cli) client() *api.Client { return api.NewClient(c.socket) }

// json reports whether the output is for machines (-o json or -o yaml).
func (c *cli) json() bool { return c.output == "json" || c.output == "yaml" }

// newRootCmd builds the whole command tree writing to stdout and stderr.
func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	c := &cli{}
	root := &cobra.Command{
		Use:   "fabricctl [OPTIONS] COMMAND",
		Short: "Control fabricd, the container network fabric agent",
		Long: `fabricctl talks to fabricd, the fabric agent on this host, over its unix
socket. It manages networks (bridge, macvlan, ipvlan), sandboxes
(network namespaces, i.e. a container's network stack) and the endpoints
that connect them, with the flags Docker users know. 'fabricctl lab' builds
a multi-host fabric on this machine out of network namespaces.

Output is a table by default; add -o json (or --output json) for the API
objects as indented JSON. 'inspect' commands always print JSON.

The socket is --socket, else $FABRIC_SOCKET, else ` + api.DefaultSocket + `.

Exit codes: 0 ok, 1 error (or warnings from 'status'), 2 agent unreachable;
a foreground 'run' exits with its command's exit code.`,
		Example: `  fabricctl status
  fabricctl network create --subnet 10.10.0.0/24 blue
  fabricctl run -d --name web --network blue -p 8080:80 -- python3 -m http.server 80
  fabricctl run --rm --network blue -- ping -c 3 web
  fabricctl sandbox ls -o json`,
		Version:       version,
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if c.output != "table" && c.output != "json" && c.output != "yaml" {
				return usageErr(cmd, fmt.Errorf("unknown output format %q: use table, json or yaml", c.output))
			}
			return nil
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetVersionTemplate("fabricctl {{.Version}}\n")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return usageErr(cmd, err) })
	root.CompletionOptions.HiddenDefaultCmd = true

	pf := root.PersistentFlags()
	pf.StringVar(&c.socket, "socket", defaultSocket(), "path of fabricd's API socket (env "+socketEnv+")")
	pf.StringVarP(&c.output, "output", "o", "table", "output format: table, json or yaml (on 'network create' use --output; -o is --opt there)")

	root.AddCommand(
		newStatusCmd(c),
		newClusterCmd(c),
		newVersionCmd(c),
		newNetworkCmd(c),
		newRunCmd(c),
		newExecCmd(c),
		newLogsCmd(c),
		newSandboxCmd(c),
		newEndpointCmd(c),
		newLabCmd(c),
	)
	// Use lines spell out [OPTIONS] themselves, Docker style.
	var noFlagsInUse func(*cobra.Command)
	noFlagsInUse = func(cmd *cobra.Command) {
		cmd.DisableFlagsInUseLine = true
		for _, sub := range cmd.Commands() {
			noFlagsInUse(sub)
		}
	}
	noFlagsInUse(root)
	return root
}

func defaultSocket() string {
	if s := os.Getenv(socketEnv); s != "" {
		return s
	}
	return api.DefaultSocket
}

// exitError ends a command with a specific exit code. When err is nil the
// command has already told the user what happened and nothing is printed.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// usageError is a mistake in the command line; the user is pointed at --help.
type usageError struct {
	cmd string
	err error
}

func (e *usageError) Error() string { return e.err.Error() }

func (e *usageError) Unwrap() error { return e.err }

func usageErr(cmd *cobra.Command, err error) error {
	return &usageError{cmd: cmd.CommandPath(), err: err}
}

// report prints err as "Error: …" on stderr and returns the exit code.
// Rejections by the agent (*api.Error) carry the agent's own message, which
// says what was wrong and how to fix it; it is printed with the API fields
// it names put as this command's flags (inFlags).
func report(err error, stderr io.Writer) int {
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintf(stderr, "Error: %s\n", inFlags(ee.err))
		}
		return ee.code
	}
	fmt.Fprintf(stderr, "Error: %s\n", inFlags(err))
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "See '%s --help'.\n", ue.cmd)
		return exitFailure
	}
	return codeOf(err)
}

func codeOf(err error) int {
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, api.ErrUnreachable):
		return exitUnreachable
	default:
		return exitFailure
	}
}

// exactArgs and minArgs are cobra argument checks whose messages name the
// missing arguments instead of only counting them.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(names) == 0 && len(args) > 0 {
			return usageErr(cmd, fmt.Errorf("%q accepts no arguments (got %q)", cmd.CommandPath(), args))
		}
		if len(args) != len(names) {
			return usageErr(cmd, fmt.Errorf("%q needs exactly %d argument(s): %s (got %d)",
				cmd.CommandPath(), len(names), strings.Join(names, " "), len(args)))
		}
		return nil
	}
}

// noSubcommand is the argument check of command groups like "network":
// any argument is a subcommand that does not exist.
func noSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErr(cmd, fmt.Errorf("unknown command %q for %q", args[0], cmd.CommandPath()))
	}
	return nil
}

func minArgs(name string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return usageErr(cmd, fmt.Errorf("%q needs at least one %s", cmd.CommandPath(), name))
		}
		return nil
	}
}

// eachName applies fn to every name, reporting failures one by one like
// `docker rm a b c` does, and fails at the end if any did. An unreachable
// agent stops the loop at once: the other names would fail the same way.
func eachName(names []string, stderr io.Writer, fn func(name string) error) error {
	failed := false
	for _, name := range names {
		err := fn(name)
		if err == nil {
			continue
		}
		if errors.Is(err, api.ErrUnreachable) {
			return err
		}
		fmt.Fprintf(stderr, "Error: %s\n", inFlags(err))
		failed = true
	}
	if failed {
		return &exitError{code: exitFailure}
	}
	return nil
}

// explain adds what fabricctl was doing to an error, except to the agent's
// own rejections and to an unreachable agent: those messages already say
// what was wrong and how to fix it, and are printed as they are.
func explain(err error, format string, args ...any) error {
	var apiErr *api.Error
	if err == nil || errors.As(err, &apiErr) || errors.Is(err, api.ErrUnreachable) {
		return err
	}
	return fmt.Errorf(format+": %w", append(args, err)...)
}
