package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/fabricnet/fabric/cluster/gossipkey"
	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns"
)

// ReadyTimeout bounds how long Up waits for each agent to answer.
var ReadyTimeout = 20 * time.Second

// AgentError is an agent that did not come up; Log is where its output
// went and LogTail the end of it.
type AgentError struct {
	Node    string
	Log     string
	LogTail string
	Err     error
}

func (e *AgentError) Error() string {
	return fmt.Sprintf("fabricd on node %s: %v (log: %s)", e.Node, e.Err, e.Log)
}

func (e *AgentError) Unwrap() error { return e.Err }

// Up builds the lab o describes: the underlay, one namespace per node, and
// a running fabricd in each, and returns once every agent answers. progress,
// if not nil, is told about each step.
//
// Once the lab directory is taken, Up returns the manifest even with an
// error: whatever it made stays, for Down to remove (or to look at).
func Up(ctx context.Context, o Options, progress func(string)) (*Manifest, error) {
	if progress == nil {
		progress = func(string) {}
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if err := checkExecutable(o.Fabricd); err != nil {
		return nil, err
	}
	m := plan(o)
	unlock, err := claimDir(o.root(), m.Dir, o.Name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := checkFree(m); err != nil {
		os.RemoveAll(m.Dir) // nothing was made yet but the directory itself
		return nil, err
	}
	// From here on, every object Up makes is in the manifest already.
	if err := m.save(); err != nil {
		os.RemoveAll(m.Dir)
		return nil, err
	}
	if err := build(ctx, m, progress); err != nil {
		return m, err
	}
	m.State = StateUp
	if err := m.save(); err != nil {
		return m, err
	}
	return m, nil
}

// build makes every object of m, in order, and starts the agents.
func build(ctx context.Context, m *Manifest, progress func(string)) error {
	for _, n := range m.Nodes {
		if err := os.MkdirAll(n.StateDir, 0o700); err != nil {
			return fmt.Errorf("create node directory: %w", err)
		}
	}
	if m.OwnKey {
		if err := gossipkey.Generate(m.KeyFile, false); err != nil {
			return fmt.Errorf("lab gossip key: %w", err)
		}
		progress("gossip key " + m.KeyFile)
	}
	progress(fmt.Sprintf("underlay %s: bridge %s in namespace %s, gateway %s",
		m.Subnet, m.Underlay.Bridge, m.Underlay.NetNS, m.Gateway))
	if err := buildUnderlay(m); err != nil {
		return err
	}
	for _, n := range m.Nodes {
		progress(fmt.Sprintf("node %s: namespace %s, %s %s", n.ID, n.NetNS, nodeUplink, n.IP))
		if err := attachNode(m, n); err != nil {
			return err
		}
	}
	// The first node starts the cluster; it must answer before the others
	// try to join it.
	ready, err := startNode(ctx, m, 0, progress)
	if err != nil {
		return err
	}
	if err := ready(); err != nil {
		return err
	}
	waits := make([]func() error, 0, len(m.Nodes)-1)
	for i := 1; i < len(m.Nodes); i++ {
		ready, err := startNode(ctx, m, i, progress)
		if err != nil {
			return err
		}
		waits = append(waits, ready)
	}
	for _, ready := range waits {
		if err := ready(); err != nil {
			return err
		}
	}
	return nil
}

// startNode starts node i's agent, records its PID, and returns a function
// that waits for the agent to answer.
func startNode(ctx context.Context, m *Manifest, i int, progress func(string)) (func() error, error) {
	n := &m.Nodes[i]
	progress(fmt.Sprintf("node %s: starting fabricd (log %s)", n.ID, n.Log))
	cmd, exited, err := startAgent(*n)
	if err != nil {
		return nil, &AgentError{Node: n.ID, Log: n.Log, LogTail: logTail(n.Log), Err: err}
	}
	n.PID, n.Started = cmd.Process.Pid, time.Now().UTC().Truncate(time.Second)
	if err := m.save(); err != nil {
		return nil, err
	}
	node := *n
	return func() error {
		if err := waitReady(ctx, node, exited); err != nil {
			return &AgentError{Node: node.ID, Log: node.Log, LogTail: logTail(node.Log), Err: err}
		}
		return nil
	}, nil
}

// startAgent starts fabricd in the node's namespace, detached (own
// session, output to the node's log), and returns a channel that gets its
// exit status if it ends.
//
// Only the network namespace is switched: the process is forked from a
// thread inside it, so the agent shares the host's mounts, bpffs
// included, and its pins outlive it.
func startAgent(n Node) (*exec.Cmd, <-chan error, error) {
	logf, err := os.OpenFile(n.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("open log: %w", err)
	}
	defer logf.Close() // the agent has its own descriptor once started
	fmt.Fprintf(logf, "--- %s fabricctl lab: nsenter --net=%s %s\n",
		time.Now().Format(time.RFC3339), n.NetNSPath(), strings.Join(n.Argv, " "))

	cmd := exec.Command(n.Argv[0], n.Argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	cmd.Env = agentEnv(os.Environ())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var startErr error
	err = netns.Do(n.NetNSPath(), func() error {
		startErr = cmd.Start()
		return nil
	})
	switch {
	case startErr != nil:
		return nil, nil, fmt.Errorf("start %s: %w", n.Argv[0], startErr)
	case err != nil && cmd.Process == nil:
		return nil, nil, fmt.Errorf("enter namespace %s: %w", n.NetNS, err)
	}
	// err != nil with a started process: only the helper thread failed to
	// come back (and was retired); the agent is where it should be.
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it if this process lives on
	return cmd, exited, nil
}

// agentEnv is the environment without FABRIC_* variables: the caller's
// FABRIC_SOCKET or FABRIC_STATE_DIR must not reach a lab agent's config.
func agentEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !strings.HasPrefix(kv, "FABRIC_") {
			out = append(out, kv)
		}
	}
	return out
}

// waitReady polls the agent's status until it answers, it exits, or
// ReadyTimeout passes.
func waitReady(ctx context.Context, n Node, exited <-chan error) error {
	cl := api.NewClient(n.Socket)
	deadline := time.Now().Add(ReadyTimeout)
	for {
		select {
		case err := <-exited:
			if err == nil {
				err = errors.New("exit status 0")
			}
			return fmt.Errorf("exited during start-up: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := cl.Status(sctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("did not answer on %s within %s: %w", n.Socket, ReadyTimeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// claimDir creates the lab's directory, failing if it exists, and locks it
// for the rest of Up.
func claimDir(root, dir, name string) (func(), error) {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", root, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("%w: %s (%s); remove it first with 'fabricctl lab down --name %s', or pick another --name",
				ErrExists, name, dir, name)
		}
		return nil, fmt.Errorf("create lab directory: %w", err)
	}
	unlock, err := lockDir(dir, 0)
	if err != nil {
		os.Remove(dir)
		return nil, err
	}
	return unlock, nil
}

// checkFree makes sure nothing the lab would create exists already: Down
// removes what the manifest names, so it must name only what Up made.
func checkFree(m *Manifest) error {
	names := []string{m.Underlay.NetNS}
	for _, n := range m.Nodes {
		names = append(names, n.NetNS)
	}
	for _, name := range names {
		if _, err := os.Lstat(netns.Path(name)); err == nil {
			return fmt.Errorf("%w: namespace %s exists but belongs to no lab %s; remove it (ip netns del %s) or pick another --name",
				ErrExists, name, m.Name, name)
		}
	}
	for _, n := range m.Nodes {
		if _, err := os.Lstat(n.BPFRoot); err == nil {
			return fmt.Errorf("%w: bpffs directory %s exists but belongs to no lab %s; remove it or pick another --name",
				ErrExists, n.BPFRoot, m.Name)
		}
	}
	return nil
}

// checkExecutable makes sure path is an executable file.
func checkExecutable(path string) error {
	if path == "" {
		return fmt.Errorf("%w: no fabricd binary given", ErrInvalid)
	}
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%w: fabricd binary: %w", ErrInvalid, err)
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return fmt.Errorf("%w: fabricd binary %s is not an executable file", ErrInvalid, path)
	}
	return nil
}

// FindFabricd returns the fabricd to use: the one next to the running
// executable (where `make build` puts both), else the one in $PATH.
func FindFabricd() (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "fabricd")
		if checkExecutable(p) == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("fabricd")
	if err != nil {
		return "", fmt.Errorf("%w: fabricd is neither next to this fabricctl nor in $PATH; build it (make build) or pass --fabricd PATH", ErrInvalid)
	}
	return filepath.Abs(p)
}

// logTail returns about the last 30 lines of a log file.
func logTail(path string) string {
	const maxBytes, maxLines = 8 << 10, 30
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(st.Size()-maxBytes, 0)
	buf := make([]byte, st.Size()-off)
	n, _ := f.ReadAt(buf, off)
	lines := strings.Split(strings.TrimRight(string(buf[:n]), "\n"), "\n")
	if off > 0 && len(lines) > 1 {
		lines = lines[1:] // the first one is cut
	}
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	return strings.Join(lines, "\n")
}
