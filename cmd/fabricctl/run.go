package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/spf13/cobra"
)

// Exit codes of a foreground run that did not get to run its command, as
// shells and `docker run` use them.
const (
	exitCannotExec = 126 // found but not executable
	exitNotFound   = 127 // no such command
	exitSignalBase = 128 // killed by signal N: 128+N
)

// forwardedSignals are passed on to a foreground command, so that stopping
// fabricctl stops the command the way stopping `docker run` does.
var forwardedSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP}

type runOptions struct {
	detach bool
	rm     bool
	req    api.SandboxCreate
}

func newRunCmd(c *cli) *cobra.Command {
	var o runOptions
	cmd := &cobra.Command{
		Use:   "run [OPTIONS] -- CMD [ARG...]",
		Short: "Run a command in a new sandbox",
		Long: `Create a sandbox (a network namespace wired to a network) and run CMD in it.

In the foreground (default) the command runs here, attached to this
terminal, inside the sandbox's network namespace; SIGINT, SIGTERM and SIGHUP
are passed on to it and fabricctl exits with its exit code (128+N if it was
killed by signal N, 127 if it was not found, 126 if it could not be run).
With -d the agent starts the command in the background and fabricctl prints
the sandbox's name.

--network chooses where the sandbox lives, as in Docker:
  NET              a network by name (default: bridge)
  host             the host's network namespace, no isolation
  none             a namespace of its own with only lo
  container:NAME   share the namespace of sandbox NAME

-p publishes a port of the sandbox on the host: [HOSTIP:]HOSTPORT:PORT[/tcp|/udp]
(tcp when no protocol is given; every host address when no HOSTIP).

Put CMD after --, so that its own options are not taken for fabricctl's:
fabricctl stops reading options at the first argument that is not one.`,
		Example: `  fabricctl run --rm -- ip addr
  fabricctl run --rm --network blue -- ping -c 3 web
  fabricctl run -d --name web --network blue --alias www -p 8080:80 -- python3 -m http.server 80
  fabricctl run -d --name dns -p 127.0.0.1:5353:53/udp -- dnsmasq -k
  fabricctl run --rm --network container:web -- ss -tlnp
  fabricctl run --network host -- curl -s http://10.10.0.2/`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageErr(cmd, errors.New(`"fabricctl run" needs a command to run: fabricctl run [OPTIONS] -- CMD [ARG...] (put CMD after --)`))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, p := range o.req.Ports {
				if _, err := api.ParsePort(p); err != nil {
					return usageErr(cmd, err)
				}
			}
			o.req.AutoRemove = o.rm
			if o.detach {
				return c.runDetached(cmd, o.req, args)
			}
			return c.runForeground(cmd, o, args)
		},
	}
	// Options end at CMD, so `run -- sh -c x` and `run sh -c x` both work.
	cmd.Flags().SetInterspersed(false)
	f := cmd.Flags()
	f.BoolVarP(&o.detach, "detach", "d", false, "let the agent run the command in the background; print the sandbox name")
	f.BoolVar(&o.rm, "rm", false, "remove the sandbox when the command exits")
	f.StringVar(&o.req.Name, "name", "", "sandbox name (default: generated); also its DNS name and /var/run/netns/NAME (PREFIXNAME with fabricd --netns-prefix)")
	f.StringVar(&o.req.Network, "network", "", "network to join: NET, host, none or container:NAME (default: bridge)")
	f.StringVar(&o.req.IP, "ip", "", "IPv4 address on the network (default: next free one)")
	f.StringArrayVarP(&o.req.Ports, "publish", "p", nil, "publish a port: [HOSTIP:]HOSTPORT:PORT[/tcp|/udp] (repeatable)")
	f.StringArrayVar(&o.req.Aliases, "alias", nil, "extra DNS name on the network (repeatable)")
	return cmd
}

func (c *cli) runDetached(cmd *cobra.Command, req api.SandboxCreate, argv []string) error {
	req.Command = argv
	sb, err := c.client().CreateSandbox(cmd.Context(), req)
	if err != nil {
		return explain(err, "create sandbox")
	}
	return c.render(cmd.OutOrStdout(), sb, func(w io.Writer) error {
		_, err := fmt.Fprintln(w, sb.Name)
		return err
	})
}

// runForeground creates the sandbox without a command, runs argv in its
// namespace as a child of fabricctl, tells the agent the child's PID, and
// ends with the child's exit code.
func (c *cli) runForeground(cmd *cobra.Command, o runOptions, argv []string) error {
	// Catch signals from the start: a Ctrl-C while the agent builds the
	// sandbox must not leave fabricctl dead and an --rm sandbox behind.
	sigc := make(chan os.Signal, 8)
	signal.Notify(sigc, forwardedSignals...)
	defer signal.Stop(sigc)

	cl := c.client()
	sb, err := cl.CreateSandbox(cmd.Context(), o.req)
	if err != nil {
		return explain(err, "create sandbox")
	}
	stderr := cmd.ErrOrStderr()
	code, runErr := func() (int, error) {
		select {
		case s := <-sigc:
			return signalCode(s), nil
		default:
		}
		child, nsPath, err := sandboxCommand(sb, argv)
		if err != nil {
			return startFailureCode(err), fmt.Errorf("start %s in sandbox %s: %w", argv[0], sb.Name, err)
		}
		child.Stdin, child.Stdout, child.Stderr = cmd.InOrStdin(), cmd.OutOrStdout(), stderr
		if code, err := startIn(nsPath, child, stderr); err != nil {
			return code, fmt.Errorf("start %s in sandbox %s: %w", argv[0], sb.Name, err)
		}
		if err := cl.SetProcess(cmd.Context(), sb.Name, api.SandboxProcess{PID: child.Process.Pid}); err != nil {
			fmt.Fprintf(stderr, "Warning: could not tell the agent the PID %d of sandbox %s: %s\n",
				child.Process.Pid, sb.Name, err)
		}
		return waitForwarding(child, sigc)
	}()
	if o.rm {
		removeAfterRun(cl, sb.Name, stderr)
	}
	if runErr != nil && code == exitOK {
		code = exitFailure
	}
	return &exitError{code: code, err: runErr}
}

// sandboxCommand builds the command that runs argv in the sandbox and the
// namespace to start it in. A named sandbox with its own resolv.conf (the
// embedded DNS server's) runs through `ip netns exec`, which bind-mounts
// /etc/netns/NAME/resolv.conf over /etc/resolv.conf in a private mount
// namespace, as Docker does for containers; anything else is started
// directly inside the namespace.
func sandboxCommand(sb api.Sandbox, argv []string) (*exec.Cmd, string, error) {
	if sb.Mode == api.ModeNetNS && filepath.Dir(sb.NetNS) == filepath.Clean(netns.RunDir) {
		if wrapped, ok := netns.ExecArgv(filepath.Base(sb.NetNS), argv); ok {
			if _, err := exec.LookPath(argv[0]); err != nil {
				return nil, "", err // report "not found" as the command's, not ip's
			}
			return exec.Command(wrapped[0], wrapped[1:]...), "", nil
		}
	}
	return exec.Command(argv[0], argv[1:]...), sb.NetNS, nil
}

// startIn starts child inside the network namespace at nsPath ("" is the
// current one, as in host mode). The fork happens on a thread switched into
// the namespace, so the child is born there; netns.Do switches it back (or
// retires it) afterwards. On failure it returns the exit code to use.
func startIn(nsPath string, child *exec.Cmd, stderr io.Writer) (int, error) {
	if nsPath == "" {
		if err := child.Start(); err != nil {
			return startFailureCode(err), err
		}
		return exitOK, nil
	}
	var startErr error
	err := netns.Do(nsPath, func() error {
		startErr = child.Start()
		return nil
	})
	switch {
	case startErr != nil:
		return startFailureCode(startErr), startErr
	case err != nil && child.Process == nil:
		return exitFailure, fmt.Errorf("enter sandbox namespace: %w", err)
	case err != nil:
		// The child runs in the right namespace; only the helper thread
		// failed to come back, and netns.Do has retired it.
		fmt.Fprintf(stderr, "Warning: %s\n", err)
	}
	return exitOK, nil
}

func startFailureCode(err error) int {
	switch {
	case errors.Is(err, exec.ErrNotFound), errors.Is(err, fs.ErrNotExist):
		return exitNotFound
	case errors.Is(err, fs.ErrPermission):
		return exitCannotExec
	default:
		return exitFailure
	}
}

// waitForwarding waits for child, passing on the signals fabricctl gets, and
// returns its exit code.
func waitForwarding(child *exec.Cmd, sigc <-chan os.Signal) (int, error) {
	done := make(chan struct{})
	forwarded := make(chan struct{})
	go func() {
		defer close(forwarded)
		for {
			select {
			case s := <-sigc:
				// An error means the child is already gone; nothing to do.
				_ = child.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err := child.Wait()
	close(done)
	<-forwarded

	st := child.ProcessState
	if st == nil {
		return exitFailure, fmt.Errorf("wait for %s: %w", child.Path, err)
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return exitSignalBase + int(ws.Signal()), nil
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		// The command ran but copying its output failed; its code still counts.
		return st.ExitCode(), fmt.Errorf("wait for %s: %w", child.Path, err)
	}
	return st.ExitCode(), nil
}

func signalCode(s os.Signal) int {
	if n, ok := s.(syscall.Signal); ok {
		return exitSignalBase + int(n)
	}
	return exitFailure
}

// removeAfterRun removes the sandbox of a finished --rm run. It uses its own
// deadline: the command's context may be long gone, and the removal must
// still happen. The agent may have removed it already (auto_remove).
func removeAfterRun(cl *api.Client, name string, stderr io.Writer) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := cl.RemoveSandbox(ctx, name)
	var apiErr *api.Error
	if err == nil || errors.As(err, &apiErr) && apiErr.Code == api.CodeNotFound {
		return
	}
	fmt.Fprintf(stderr, "Error: remove sandbox %s: %s\n", name, err)
}
