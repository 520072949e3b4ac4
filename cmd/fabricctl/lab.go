package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"

	"github.com/fabricnet/fabric/cmd/internal/lab"
	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/spf13/cobra"
)

// labRoot is where labs live; tests point it elsewhere.
var labRoot = lab.DefaultRoot

func newLabCmd(c *cli) *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Build a multi-host fabric on this machine from network namespaces",
		Long: `A lab is several fabric hosts on one machine, for trying fabric out and
for tests. Each host ("node") is a network namespace with an eth0 on a
shared underlay bridge, a default route, and its own fabricd with its own
state directory, API socket, bpffs directory and node name. The agents are
joined into one cluster.

'lab up' builds it and prints how to reach each node, 'lab status' shows
whether its agents run, 'lab exec' runs a command on a node (with
FABRIC_SOCKET pointing at that node's agent, so fabricctl inside just
works), 'lab down' removes everything the lab made.

Nothing in this machine's own network namespace is touched: the underlay
bridge lives in a namespace of its own (NAME-ul), the nodes are NAME-n1,
NAME-n2, … The lab's records, agent state, sockets and logs are under
` + lab.DefaultRoot + `/NAME, the agents' eBPF pins under
` + lab.BPFDir + `/fabric-lab-NAME-nI. Several labs can run side by side
under different --name values. Needs root.`,
		Example: `  fabricctl lab up --nodes 3 --datapath kernel
  fabricctl lab exec n1 -- fabricctl network create --subnet 10.10.0.0/24 blue
  fabricctl lab exec n2 -- ping -c 1 10.99.0.11
  fabricctl lab status
  fabricctl lab down`,
		Args: noSubcommand,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.PersistentFlags().StringVar(&name, "name", lab.DefaultName, "name of the lab; prefix of its namespaces")
	cmd.AddCommand(newLabUpCmd(c, &name), newLabStatusCmd(c, &name), newLabExecCmd(&name), newLabStartCmd(&name), newLabDownCmd(c, &name))
	return cmd
}

func newLabUpCmd(c *cli, name *string) *cobra.Command {
	var (
		o      lab.Options
		subnet string
	)
	cmd := &cobra.Command{
		Use:   "up [OPTIONS]",
		Short: "Build a lab and start a fabricd on each of its nodes",
		Long: `Build a lab of --nodes hosts: an underlay bridge with gateway .1 of --subnet
in namespace NAME-ul; nodes NAME-n1 … NAME-nN, node I with eth0 at .(10+I)
and a default route via the gateway; and in each node a fabricd started
with only its network namespace switched (so its pinned eBPF objects
survive it), with

  --state-dir, --socket, log     under ` + lab.DefaultRoot + `/NAME/nI/
  --bpf-root                     ` + lab.BPFDir + `/fabric-lab-NAME-nI
  --node-name NAME-nI  --datapath D  --uplink eth0  --config /dev/null
  --cluster-bind .(10+I):7946    (nodes 2..N also --cluster-join node 1)
  --cluster-secret-file F        --secret-file, else a fresh key NAME/gossip.key
  --metrics-listen .(10+I):9475  (reachable from NAME-ul, not from the host)
  --netns-prefix NAME-nI-        (sandbox S of node I is /var/run/netns/NAME-nI-S)
  --dns-upstreams .1:53          (the gateway, where nothing answers: outside
                                  names fail at once in the isolated lab)

and waits up to 20 s for each agent to answer. Then it prints how to
reach every node.

A lab of the same name must not exist: remove it first with 'lab down'.
If an agent does not come up, the end of its log is printed and the lab
is left for you to look at; 'lab down' removes it.

Exit codes: 0 the lab is up, 1 bad options (nothing created) or a failure.`,
		Example: `  fabricctl lab up
  fabricctl lab up --nodes 2 --datapath kernel --name demo --subnet 10.98.0.0/24
  fabricctl lab up --fabricd ./bin/fabricd -o json`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Name, o.Root = *name, labRoot
			var err error
			if o.Subnet, err = lab.ParseSubnet(subnet); err != nil {
				return usageErr(cmd, err)
			}
			if err := o.Validate(); err != nil {
				return usageErr(cmd, err) // before looking for fabricd: nothing to find for bad options
			}
			if o.Fabricd == "" {
				o.Fabricd, err = lab.FindFabricd()
			} else {
				o.Fabricd, err = filepath.Abs(o.Fabricd)
			}
			if err != nil {
				return usageErr(cmd, err)
			}
			if os.Geteuid() != 0 {
				return errors.New("lab up needs root: it creates network namespaces, links and bpffs directories")
			}
			return c.labUp(cmd, o)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Nodes, "nodes", lab.DefaultNodes, fmt.Sprintf("number of nodes, 1 to %d", lab.MaxNodes))
	f.StringVar(&o.Datapath, "datapath", lab.DefaultDatapath, "every agent's --datapath: auto, ebpf or kernel")
	f.StringVar(&o.SecretFile, "secret-file", "", "every agent's --cluster-secret-file (made absolute; read at every agent start); default: a fresh key in the lab's directory")
	f.StringVar(&o.Fabricd, "fabricd", "", "fabricd binary (default: the one next to fabricctl, else the one in $PATH)")
	f.StringVar(&subnet, "subnet", lab.DefaultSubnet.String(), "underlay subnet (IPv4 CIDR, room for .1 and .11 up); exists only inside the lab")
	return cmd
}

func (c *cli) labUp(cmd *cobra.Command, o lab.Options) error {
	stderr := cmd.ErrOrStderr()
	if o.SecretFile != "" {
		abs, err := filepath.Abs(o.SecretFile)
		if err != nil {
			return usageErr(cmd, fmt.Errorf("--secret-file: %w", err))
		}
		o.SecretFile = abs
	}
	m, err := lab.Up(cmd.Context(), o, func(step string) { fmt.Fprintln(stderr, step) })
	if err != nil {
		if errors.Is(err, lab.ErrInvalid) {
			return usageErr(cmd, err)
		}
		var ae *lab.AgentError
		if errors.As(err, &ae) && ae.LogTail != "" {
			fmt.Fprintf(stderr, "--- end of %s:\n%s\n---\n", ae.Log, ae.LogTail)
		}
		if m != nil {
			err = fmt.Errorf("%w\nThe lab is left as it is for you to look at; remove it with: fabricctl lab down --name %s", err, o.Name)
		}
		return err
	}
	st := lab.GetStatus(cmd.Context(), m)
	return c.render(cmd.OutOrStdout(), st, func(w io.Writer) error { return labUpText(w, st) })
}

// labUpText tells the user what was built and how to reach each node.
func labUpText(w io.Writer, st lab.Status) error {
	fmt.Fprintf(w, "Lab %s is up: %d node(s), datapath %s, underlay %s (bridge %s in namespace %s, gateway %s).\n\n",
		st.Name, len(st.Nodes), st.Datapath, st.Subnet, st.Underlay.Bridge, st.Underlay.NetNS, st.Gateway)
	if err := labNodeTable(w, st.Nodes); err != nil {
		return err
	}
	nameFlag := ""
	if st.Name != lab.DefaultName {
		nameFlag = " --name " + st.Name
	}
	fmt.Fprintf(w, "\nReach a node:\n")
	for _, n := range st.Nodes {
		fmt.Fprintf(w, "  fabricctl --socket %s status\n", n.Socket)
	}
	first := st.Nodes[0].ID
	fmt.Fprintf(w, "  fabricctl lab%s exec %s -- fabricctl run --rm -- ip addr   # any command, on node %s\n", nameFlag, first, first)
	fmt.Fprintf(w, "  fabricctl lab%s exec %s                                     # a shell there\n", nameFlag, first)
	if targets := labMetricsTargets(st.Nodes); targets != "" {
		fmt.Fprintf(w, "Metrics: %s (reachable from the underlay namespace: nsenter --net=%s prometheus …)\n",
			targets, netns.Path(st.Underlay.NetNS))
	}
	logs := make([]string, 0, len(st.Nodes))
	for _, n := range st.Nodes {
		logs = append(logs, n.Log)
	}
	fmt.Fprintf(w, "Logs: %s\n", strings.Join(logs, " "))
	_, err := fmt.Fprintf(w, "Check it: fabricctl lab%s status   Remove it: fabricctl lab%s down\n", nameFlag, nameFlag)
	return err
}

// labMetricsTargets lists the nodes' metrics addresses, as Prometheus
// targets; "" for a lab made before agents served metrics on the underlay.
func labMetricsTargets(nodes []lab.NodeStatus) string {
	var targets []string
	for _, n := range nodes {
		if n.Metrics.IsValid() {
			targets = append(targets, n.Metrics.String())
		}
	}
	return strings.Join(targets, " ")
}

func labNodeTable(w io.Writer, nodes []lab.NodeStatus) error {
	t := newTable(w, "NODE", "NAMESPACE", "UNDERLAY-IP", "PID", "STATE", "DATAPATH", "METRICS", "SOCKET")
	for _, n := range nodes {
		state := n.State
		if len(n.Warnings) > 0 {
			state += fmt.Sprintf(" (%d %s)", len(n.Warnings), plural(len(n.Warnings), "warning", "warnings"))
		}
		if !n.NetNSOK {
			state += " (namespace gone)"
		}
		metrics := "" // a lab made before agents served metrics on the underlay
		if n.Metrics.IsValid() {
			metrics = n.Metrics.String()
		}
		t.row(n.ID, n.NetNS, n.IP.String(), pidString(n.PID), state, n.Datapath, metrics, n.Socket)
	}
	return t.flush()
}

func newLabStatusCmd(c *cli, name *string) *cobra.Command {
	return &cobra.Command{
		Use:   "status [OPTIONS]",
		Short: "Show a lab's nodes and whether their agents run",
		Long: `Show a lab and, for each node, its namespace, underlay address, agent PID,
state and datapath (from the agent's own status), metrics address (where
a Prometheus in the underlay namespace scrapes it) and API socket. A node's
state is "running" (the agent answers), "unresponsive" (its process runs
but does not answer) or "dead" (no fabricd serves its socket).

Exit codes: 0 every agent runs and answers, 1 otherwise or no such lab.
That makes it usable as a health check.`,
		Example: `  fabricctl lab status
  fabricctl lab status --name demo -o json
  fabricctl lab status -o json | jq -r '.nodes[] | select(.alive | not) | .id'`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := loadLab(*name)
			if err != nil {
				return err
			}
			st := lab.GetStatus(cmd.Context(), m)
			if err := c.render(cmd.OutOrStdout(), st, func(w io.Writer) error {
				fmt.Fprintf(w, "Lab %s: %s since %s, datapath %s, underlay %s (namespace %s, gateway %s), %s\n\n",
					st.Name, st.State, st.Created.Local().Format("2006-01-02 15:04:05"), st.Datapath,
					st.Subnet, st.Underlay.NetNS, st.Gateway, st.Dir)
				return labNodeTable(w, st.Nodes)
			}); err != nil {
				return err
			}
			if !st.Healthy() {
				return &exitError{code: exitFailure}
			}
			return nil
		},
	}
}

// loadLab reads a lab's manifest; for a missing lab it names the ones
// that exist.
func loadLab(name string) (*lab.Manifest, error) {
	m, err := lab.Load(labRoot, name)
	if !errors.Is(err, lab.ErrNotFound) {
		return m, err
	}
	names, _ := lab.List(labRoot)
	if len(names) == 0 {
		return nil, fmt.Errorf("%w; there are no labs (make one with 'fabricctl lab up')", err)
	}
	return nil, fmt.Errorf("%w; existing labs: %s (choose with --name)", err, strings.Join(names, ", "))
}

func newLabExecCmd(name *string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "exec [OPTIONS] NODE [-- CMD [ARG...]]",
		Short: "Run a command on a lab node (a shell when no command is given)",
		Long: `Run CMD inside the network namespace of a lab node, with FABRIC_SOCKET set
to that node's agent socket, so 'fabricctl …' in it talks to that node's
fabricd. Without CMD, start $SHELL (or /bin/sh).

NODE is n1, n2, … (or 1, 2, …, or the full name NAME-n1). Only the network
namespace is switched (setns, like 'nsenter --net'), never the mount
namespace as 'ip netns exec' does, so /sys/fs/bpf and the rest of the
host's mounts look the same as outside.

SIGINT, SIGTERM and SIGHUP are passed on to the command; the exit code is
its own (128+N if killed by signal N, 127 if not found, 126 if it could
not be run), or 1 if the lab or node does not exist.

Put CMD after --, so its options are not taken for fabricctl's.`,
		Example: `  fabricctl lab exec n2 -- fabricctl status
  fabricctl lab exec n1 -- fabricctl run -d --name web -- python3 -m http.server 80
  fabricctl lab exec n3 -- ping -c 1 10.99.0.11
  fabricctl lab --name demo exec n1`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageErr(cmd, errors.New(`"fabricctl lab exec" needs a node: fabricctl lab exec NODE [-- CMD [ARG...]]`))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := loadLab(*name)
			if err != nil {
				return err
			}
			n, err := m.Node(args[0])
			if err != nil {
				return err
			}
			argv := args[1:]
			if len(argv) > 0 && argv[0] == "--" {
				// Option parsing stopped at NODE, so the -- is still here.
				argv = argv[1:]
			}
			return labExec(cmd, *n, argv)
		},
	}
	cmd.Flags().SetInterspersed(false)
	return cmd
}

// labExec runs argv in the node's namespace as a child of fabricctl and
// ends with its exit code.
func labExec(cmd *cobra.Command, n lab.Node, argv []string) error {
	if !netns.IsNamespace(n.NetNSPath()) {
		return fmt.Errorf("namespace %s of node %s is gone; the lab is broken: remove it with 'fabricctl lab down'", n.NetNSPath(), n.ID)
	}
	if len(argv) == 0 {
		sh := os.Getenv("SHELL")
		if sh == "" {
			sh = "/bin/sh"
		}
		argv = []string{sh}
	}
	sigc := make(chan os.Signal, 8)
	signal.Notify(sigc, forwardedSignals...)
	defer signal.Stop(sigc)

	stderr := cmd.ErrOrStderr()
	env, argv := execEnvPath(append(withoutEnv(os.Environ(), socketEnv), socketEnv+"="+n.Socket), argv)
	child := exec.Command(argv[0], argv[1:]...)
	child.Stdin, child.Stdout, child.Stderr = cmd.InOrStdin(), cmd.OutOrStdout(), stderr
	child.Env = env
	if code, err := startIn(n.NetNSPath(), child, stderr); err != nil {
		return &exitError{code: code, err: fmt.Errorf("start %s on node %s: %w", argv[0], n.ID, err)}
	}
	code, err := waitForwarding(child, sigc)
	if err != nil && code == exitOK {
		code = exitFailure
	}
	return &exitError{code: code, err: err}
}

// withoutEnv drops the variable key from env.
func withoutEnv(env []string, key string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return out
}

func newLabStartCmd(name *string) *cobra.Command {
	return &cobra.Command{
		Use:   "start NODE",
		Short: "Start a lab node's agent again after it died",
		Long: `Start the fabricd of one lab node again, with the same arguments, state
directory and bpffs pins, after it crashed or was killed (kill -9 of the
PID that 'lab status' shows is how failure tests take a node down). It
waits until the agent answers. A node whose agent is running is left alone.

The agent rejoins the cluster by itself; its sandboxes kept running while
it was down.`,
		Example: `  fabricctl lab status            # n3 dead
  fabricctl lab start n3`,
		Args: exactArgs("NODE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			started, err := lab.StartNode(cmd.Context(), labRoot, *name, args[0])
			if err != nil {
				return err
			}
			msg := "Node %s of lab %s is already running.\n"
			if started {
				msg = "Node %s of lab %s started.\n"
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), msg, args[0], *name)
			return err
		},
	}
}

func newLabDownCmd(c *cli, name *string) *cobra.Command {
	return &cobra.Command{
		Use:   "down [OPTIONS]",
		Short: "Remove a lab and everything it made",
		Long: `Remove a lab: first the sandboxes its agents made (through each agent's
API while it answers), then the agents (SIGTERM, SIGKILL after 10 s; only
processes that are fabricd serving a node's socket), sandbox namespaces
that a dead agent's state file still lists, every process left in the
lab's namespaces, the node and underlay namespaces, the agents' bpffs
directories (which detaches their eBPF programs) and the lab directory.

It works from what the lab's manifest records, which 'lab up' writes
before it creates anything, so it also cleans up after a crash of 'lab
up', of the agents or of 'lab down' itself. Running it twice is fine.
Sandbox namespaces of a dead agent whose state file cannot be read, and
namespaces connected by path (network connect /proc/PID/ns/net), are not
removed.

Exit codes: 0 the lab is gone (also when there was no such lab), 1 some
of it could not be removed: what is left is listed, and the manifest is
kept so that 'lab down' can be run again.`,
		Example: `  fabricctl lab down
  fabricctl lab down --name demo
  fabricctl lab down -o json`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			stderr := cmd.ErrOrStderr()
			rep, err := lab.Down(cmd.Context(), labRoot, *name, func(step string) { fmt.Fprintln(stderr, step) })
			if errors.Is(err, lab.ErrNotFound) {
				if c.json() {
					return c.emit(cmd.OutOrStdout(), rep)
				}
				_, werr := fmt.Fprintf(cmd.OutOrStdout(), "No lab %s: nothing to remove.\n", *name)
				return werr
			}
			if rep == nil {
				return err
			}
			for _, note := range rep.Notes {
				fmt.Fprintf(stderr, "Note: %s\n", note)
			}
			if rerr := c.render(cmd.OutOrStdout(), rep, func(w io.Writer) error {
				for _, r := range rep.Removed {
					fmt.Fprintf(w, "removed %s\n", r)
				}
				if err == nil {
					_, werr := fmt.Fprintf(w, "Lab %s removed.\n", *name)
					return werr
				}
				return nil
			}); rerr != nil {
				return rerr
			}
			return err
		},
	}
}
