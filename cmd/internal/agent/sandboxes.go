package agent

import (
	"cmp"
	"context"
	"fmt"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/dns"
	"github.com/fabricnet/fabric/cmd/internal/store"
	"github.com/fabricnet/fabric/datapath/netns"
)

type storeTx = *store.Tx

// CreateSandbox creates a sandbox, its namespace and endpoint, and starts
// its command when one is given (run -d).
func (a *Agent) CreateSandbox(ctx context.Context, req api.SandboxCreate) (api.Sandbox, error) {
	ctx, release := a.reserveOverlay(ctx, cmp.Or(req.Network, DefaultNetworkName), req.IP) // the vote, without the lock
	defer release()
	if req.NetNS != "" {
		return a.createExternalSandbox(ctx, req)
	}
	if err := validOwner(req); err != nil {
		return api.Sandbox{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	sb, eps, err := a.planSandbox(ctx, req)
	if err != nil {
		return api.Sandbox{}, err
	}
	sb.Owner, sb.ContainerID = req.Owner, req.ContainerID
	if err := a.addSandbox(ctx, sb, eps); err != nil {
		return api.Sandbox{}, err
	}
	return a.sandboxAPI(sb), nil
}

// planSandbox validates the request and reserves addresses; nothing is
// written. On error every reserved address is released again.
func (a *Agent) planSandbox(ctx context.Context, req api.SandboxCreate) (*sandboxRec, []*endpointRec, error) {
	name := req.Name
	if name == "" {
		name = "sb-" + newID()[:10]
	}
	if err := validName("sandbox", name); err != nil {
		return nil, nil, err
	}
	if err := dns.ValidLabel(name); err != nil {
		return nil, nil, invalidf("sandbox name %q is not valid: it is the sandbox's DNS name, one label (1 to 63 letters, digits, '-' or '_', no '.'), so it cannot stand for an outside name", name)
	}
	// The whole body is checked before any clash with what exists, so a
	// malformed request gets the same answer whatever the host holds.
	if err := validAliases(req.Aliases); err != nil {
		return nil, nil, err
	}
	for _, p := range req.Ports {
		if _, err := api.ParsePort(p); err != nil {
			return nil, nil, invalidf("%v", err)
		}
	}
	if a.sandboxes[name] != nil {
		return nil, nil, naming(conflictf("sandbox %q already exists; remove it with `fabricctl sandbox rm %s` or choose another name", name, name), "name")
	}
	sb := &sandboxRec{
		Name: name, Command: req.Command, AutoRemove: req.AutoRemove, Aliases: req.Aliases,
		Created: time.Now().UTC(), Phase: phaseCreating,
	}
	if err := validAliases(req.Aliases); err != nil {
		return nil, nil, err
	}
	network, err := a.planMode(sb, req.Network)
	if err != nil {
		return nil, nil, err
	}
	if err := a.planNamespace(sb); err != nil {
		return nil, nil, err
	}
	if err := a.planPublished(sb, network, req); err != nil {
		return nil, nil, err
	}
	if len(req.Command) == 0 && req.AutoRemove && sb.Mode == api.ModeContainer {
		return nil, nil, naming(invalidf("auto_remove without a command has nothing to wait for"), "auto_remove")
	}
	if network == nil {
		return sb, nil, nil
	}
	ep, err := a.planEndpoint(ctx, network, name, true, req.IP, req.Aliases)
	if err != nil {
		return nil, nil, err
	}
	return sb, []*endpointRec{ep}, nil
}

// planMode sets the sandbox's network mode from the request's network
// (host, none, container:NAME or a network) and returns the network it
// joins, if any.
func (a *Agent) planMode(sb *sandboxRec, mode string) (*networkRec, error) {
	var network *networkRec
	switch {
	case mode == api.ModeHost:
		sb.Mode = api.ModeHost
	case mode == api.ModeNone:
		sb.Mode = api.ModeNone
	case strings.HasPrefix(mode, "container:"):
		target := a.sandboxes[strings.TrimPrefix(mode, "container:")]
		if target == nil {
			return nil, naming(notFoundf("network %s: sandbox %q not found", mode, strings.TrimPrefix(mode, "container:")), "network")
		}
		if target.Phase != phaseReady {
			return nil, conflictf("sandbox %q is being created or removed", target.Name)
		}
		sb.Mode, sb.Container, sb.NetNS = api.ModeContainer, target.Name, target.NetNS
		if target.Mode == api.ModeContainer {
			sb.Container = target.Container // join the namespace's owner
		}
		if target.Mode == api.ModeHost {
			sb.Mode, sb.Container = api.ModeHost, ""
		}
	default:
		if mode == "" {
			mode = DefaultNetworkName
		}
		n, err := a.networkLocked(mode)
		if err != nil {
			return nil, err
		}
		if n.Phase != phaseReady {
			return nil, conflictf("network %q is being created or removed", n.Name)
		}
		network = n
		sb.Mode = api.ModeNetNS
	}
	return network, nil
}

// planNamespace names the namespace of a sandbox that gets one of its own.
func (a *Agent) planNamespace(sb *sandboxRec) error {
	if sb.Mode == api.ModeNetNS || sb.Mode == api.ModeNone {
		nsName := a.nsName(sb.Name)
		if err := netns.ValidName(nsName); err != nil {
			return invalidf("sandbox name %q: its namespace name %s: %v", sb.Name, nsName, err)
		}
		if a.host.NamespaceExists(nsName) {
			return naming(conflictf("a network namespace named %q already exists (ip netns list); choose another name", nsName), "name")
		}
		sb.NetNS = netns.Path(nsName)
	}
	return nil
}

// planPublished checks the static address and plans the published ports
// of a sandbox joining network (nil: none).
func (a *Agent) planPublished(sb *sandboxRec, network *networkRec, req api.SandboxCreate) error {
	if req.IP != "" && network == nil {
		return naming(invalidf("ip cannot be given with network %s: it assigns no addresses", req.Network), "ip", "network")
	}
	if len(req.Ports) > 0 {
		if network == nil {
			return naming(invalidf("ports needs a sandbox address to publish, and network %s gives none (in host mode the command's ports are already the host's)", req.Network), "ports", "network")
		}
		if network.Internal {
			return invalidf("network %q is internal: ports cannot be published from it", network.Name)
		}
		if lanDriver(network.Driver) {
			return naming(invalidf("ports are not needed on %s network %q: the sandbox has its own address on the LAN", network.Driver, network.Name), "ports")
		}
		ports, err := a.planPorts(req.Ports)
		if err != nil {
			return err
		}
		sb.Ports = ports
	}
	return nil
}

// planPorts parses -p specs and refuses host ports already published.
func (a *Agent) planPorts(specs []string) ([]api.Port, error) {
	var out []api.Port
	for _, s := range specs {
		p, err := api.ParsePort(s)
		if err != nil {
			return nil, invalidf("%v", err)
		}
		for _, q := range out {
			if portsClash(p, q) {
				return nil, naming(invalidf("ports %s and %s publish the same host port", p, q), "ports")
			}
		}
		for _, pub := range a.hostPorts[hostPortKey{p.Proto, p.HostPort}] {
			if portsClash(p, pub.port) {
				return nil, naming(conflictf("host port %d/%s is already published by sandbox %q (ports %s)", p.HostPort, p.Proto, pub.sandbox, pub.port), "ports")
			}
		}
		out = append(out, p)
	}
	return out, nil
}

func portsClash(p, q api.Port) bool {
	return p.Proto == q.Proto && p.HostPort == q.HostPort && (p.HostIP == "" || q.HostIP == "" || p.HostIP == q.HostIP)
}

// hostPortKey indexes the published ports by protocol and host port, so a
// create checks its ports for clashes without walking every sandbox.
type hostPortKey struct {
	proto string
	port  uint16
}

type published struct {
	sandbox string
	port    api.Port
}

// putSandbox adds sb to the sandboxes and its ports to the index of
// published ports; dropSandbox takes them out again.
func (a *Agent) putSandbox(sb *sandboxRec) {
	if old := a.sandboxes[sb.Name]; old != nil {
		a.dropSandbox(old)
	}
	a.view.Lock()
	a.sandboxes[sb.Name] = sb
	a.view.Unlock()
	for _, p := range sb.Ports {
		k := hostPortKey{p.Proto, p.HostPort}
		a.hostPorts[k] = append(a.hostPorts[k], published{sb.Name, p})
	}
}

func (a *Agent) dropSandbox(sb *sandboxRec) {
	if a.sandboxes[sb.Name] == sb {
		a.view.Lock()
		delete(a.sandboxes, sb.Name)
		a.view.Unlock()
	}
	for _, p := range sb.Ports {
		k := hostPortKey{p.Proto, p.HostPort}
		l := slices.DeleteFunc(a.hostPorts[k], func(x published) bool { return x.sandbox == sb.Name && x.port == p })
		if len(l) == 0 {
			delete(a.hostPorts, k)
		} else {
			a.hostPorts[k] = l
		}
	}
}

// addSandbox stores, programs and starts a planned sandbox; on failure
// everything it did is undone. It costs two store commits: the records go
// in as "creating" before the kernel is touched and become "ready" at the
// end.
func (a *Agent) addSandbox(ctx context.Context, sb *sandboxRec, eps []*endpointRec) (err error) {
	if err := a.storeRecords(sb, true, eps); err != nil {
		for _, ep := range eps {
			a.releaseAddr(ep)
		}
		return err
	}
	a.putSandbox(sb)
	for _, ep := range eps {
		a.indexEndpoint(ep)
	}
	defer func() {
		if err != nil {
			if rerr := a.removeSandboxLocked(ctx, sb); rerr != nil {
				a.log.Error("roll back sandbox", "sandbox", sb.Name, "err", rerr)
			}
		}
	}()
	if sb.Mode == api.ModeNetNS || sb.Mode == api.ModeNone {
		if err := a.host.CreateNamespace(sandboxNSName(sb)); err != nil {
			return fmt.Errorf("create namespace for sandbox %s: %w", sb.Name, err)
		}
	}
	for _, ep := range eps {
		if err := a.ensureEndpoint(ctx, ep); err != nil {
			return err
		}
	}
	// The resolver and resolv.conf exist before the command starts.
	a.attachDNS(sb)
	if len(sb.Command) > 0 {
		startIn, err := a.commandStart(sb)
		if err != nil {
			return &userError{ErrInvalid, fmt.Sprintf("start command %q: %v", sb.Command[0], err)}
		}
		pid, start, logPath, err := a.procs.start(sb.Name, sb.Command, startIn)
		if err != nil {
			return &userError{ErrInvalid, fmt.Sprintf("start command %q: %v", sb.Command[0], err)}
		}
		sb.PID, sb.PIDStart, sb.LogPath, sb.ClientPID = pid, start, logPath, false
	}
	err = a.store.Update(func(tx storeTx) error {
		sb.Phase = phaseReady
		for _, ep := range eps {
			ep.Phase = phaseReady
			if err := tx.Put(bucketEndpoints, ep.ID, ep); err != nil {
				return err
			}
		}
		return tx.Put(bucketSandboxes, sb.Name, sb)
	})
	if err != nil {
		return err
	}
	a.publish(eps)
	a.refreshEndpointDNS(eps...)
	a.log.Info("sandbox created", "sandbox", sb.Name, "mode", sb.Mode, "pid", sb.PID)
	return nil
}

// commandStart returns how to start a sandbox's command, in its namespace.
// A named sandbox's command gets what `ip netns exec` gives: a mount
// namespace of its own where /etc/netns/NAME/resolv.conf (the embedded DNS
// server's) is bind-mounted over /etc/resolv.conf, as Docker does for its
// containers, and /sys is the namespace's. netns.StartIn does that (in the
// spawner, see spawner.go) without copying every other sandbox's namespace
// mount into the command's mount namespace, which made set-up and removal
// slower the more sandboxes ran.
func (a *Agent) commandStart(sb *sandboxRec) (launch, error) {
	if _, err := exec.LookPath(sb.Command[0]); err != nil {
		return launch{}, err
	}
	if sb.Mode == api.ModeNetNS {
		return launch{netns: sandboxNSName(sb)}, nil
	}
	nsPath := a.commandNetNS(sb)
	if nsPath == "" {
		return launch{in: (*exec.Cmd).Start}, nil
	}
	return launch{in: func(cmd *exec.Cmd) error { return netns.Do(nsPath, cmd.Start) }}, nil
}

// commandNetNS is the namespace a sandbox's command runs in.
func (a *Agent) commandNetNS(sb *sandboxRec) string {
	if sb.Mode == api.ModeHost {
		return a.opts.HostNetNS
	}
	return sb.NetNS
}

// RemoveSandbox stops a sandbox's command and removes it with its
// endpoints, addresses and namespace.
func (a *Agent) RemoveSandbox(ctx context.Context, name string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	sb, _, err := a.resolveSandbox(name, false)
	if err != nil {
		return err
	}
	var joined []string
	for _, o := range a.sandboxes {
		if o.Mode == api.ModeContainer && o.Container == sb.Name {
			joined = append(joined, o.Name)
		}
	}
	if len(joined) > 0 {
		sort.Strings(joined)
		return naming(conflictf("sandbox %q shares its namespace with %s (network container:%s); remove those first", sb.Name, strings.Join(joined, ", "), sb.Name), "network")
	}
	return a.removeSandboxLocked(ctx, sb)
}

// removeSandboxLocked tears a sandbox down in the crash-safe order: mark,
// stop, unplug, delete.
//
// A ready sandbox of the agent's own namespace leaves its veth pairs to
// the namespace (datapath.Endpoint's NamespaceGoes): removing many costs
// the kernel one batch, not an RCU wait each. The rollback of a create or
// of an interrupted removal deletes them itself, so that a rejected
// request has changed nothing, in the kernel too, once it is answered.
func (a *Agent) removeSandboxLocked(ctx context.Context, sb *sandboxRec) error {
	namespaceGoes := sb.Phase == phaseReady && sb.Mode == api.ModeNetNS
	sb.Phase = phaseRemoving
	if err := a.store.Update(func(tx storeTx) error { return tx.Put(bucketSandboxes, sb.Name, sb) }); err != nil {
		return err
	}
	// Its names go first, then its resolver.
	a.refreshEndpointDNS(a.sandboxEndpoints(sb.Name)...)
	a.detachDNS(sb)
	if sb.PID > 0 && !sb.Exited {
		// A command the agent started is its own session and goes with
		// its process group; a client's process goes alone, and only
		// while it is in the sandbox's namespace.
		if err := a.procs.stop(sb.PID, sb.PIDStart, 5*time.Second, !sb.ClientPID, a.commandNetNS(sb)); err != nil {
			return fmt.Errorf("stop sandbox %s: %w", sb.Name, err)
		}
	}
	// A create cut short: its command may run unrecorded.
	if n, err := killUnrecorded(sb); err != nil {
		a.log.Warn("stop the commands of an unfinished sandbox", "sandbox", sb.Name, "err", err)
	} else if n > 0 {
		a.log.Warn("stopped processes left in the namespace of an unfinished sandbox", "sandbox", sb.Name, "processes", n)
	}
	if err := a.removeEndpoints(ctx, a.sandboxEndpoints(sb.Name), namespaceGoes); err != nil {
		return err
	}
	if sb.Mode == api.ModeNetNS || sb.Mode == api.ModeNone {
		if err := a.host.DeleteNamespace(sandboxNSName(sb)); err != nil {
			return fmt.Errorf("remove namespace of sandbox %s: %w", sb.Name, err)
		}
	}
	if err := a.store.Update(func(tx storeTx) error { return tx.Delete(bucketSandboxes, sb.Name) }); err != nil {
		return err
	}
	a.dropSandbox(sb)
	a.releaseExternal(sb)
	a.procs.removeLog(sb.LogPath)
	a.log.Info("sandbox removed", "sandbox", sb.Name)
	return nil
}

// setProcessWait bounds how long SetProcess waits for a client's process
// to enter the sandbox's namespace: `ip netns exec` is reported as soon as
// it starts, and switches namespace a moment later.
const setProcessWait = 2 * time.Second

// SetProcess records the PID of a command a client runs in the sandbox. The
// process must be in the sandbox's network namespace: the agent signals it
// on sandbox rm, so a PID of anything else (a typo, a reused PID) must not
// be taken.
func (a *Agent) SetProcess(name string, pid int) error {
	a.mu.Lock()
	sb := a.sandboxes[name]
	var nsPath string
	if sb != nil {
		nsPath = a.commandNetNS(sb)
	}
	a.mu.Unlock()
	if sb == nil {
		return notFoundf("sandbox %q not found", name)
	}
	if pid <= 1 {
		return invalidf("pid %d is not a command's process", pid)
	}
	start, err := processStart(pid)
	if err != nil {
		return invalidf("process %d: %v", pid, err)
	}
	// Without the lock: this may wait.
	if err := waitInNamespace(pid, start, nsPath, setProcessWait); err != nil {
		return invalidf("process %d cannot be sandbox %s's command: %v", pid, name, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.sandboxes[name] != sb {
		return notFoundf("sandbox %q was removed meanwhile", name)
	}
	if sb.PID > 0 && !sb.Exited {
		return conflictf("sandbox %q already runs process %d", name, sb.PID)
	}
	sb.PID, sb.PIDStart, sb.Exited, sb.ExitCode, sb.ClientPID = pid, start, false, nil, true
	if err := a.store.Update(func(tx storeTx) error { return tx.Put(bucketSandboxes, sb.Name, sb) }); err != nil {
		return err
	}
	a.procs.watch(name, pid, start)
	return nil
}

// processExited is called by the process watchers.
func (a *Agent) processExited(name string, pid int, code *int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sb := a.sandboxes[name]
	if sb == nil || sb.PID != pid || sb.Phase != phaseReady {
		return
	}
	sb.Exited, sb.ExitCode = true, code
	if err := a.store.Update(func(tx storeTx) error { return tx.Put(bucketSandboxes, sb.Name, sb) }); err != nil {
		a.log.Error("record exit", "sandbox", name, "err", err)
	}
	a.log.Info("sandbox command exited", "sandbox", name, "pid", pid, "code", fmtCode(code))
	if sb.AutoRemove {
		if err := a.removeSandboxLocked(context.Background(), sb); err != nil {
			a.log.Error("auto-remove sandbox", "sandbox", name, "err", err)
		}
	}
}

func fmtCode(code *int) string {
	if code == nil {
		return "unknown"
	}
	return fmt.Sprint(*code)
}

// Sandboxes lists sandboxes by name.
func (a *Agent) Sandboxes() []api.Sandbox {
	a.mu.Lock()
	defer a.mu.Unlock()
	return byName(a.sandboxes, a.sandboxAPI, func(sb api.Sandbox) string { return sb.Name })
}

// Sandbox returns one sandbox.
func (a *Agent) Sandbox(name string) (api.Sandbox, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sb, _, err := a.resolveSandbox(name, false)
	if err != nil {
		return api.Sandbox{}, err
	}
	return a.sandboxAPI(sb), nil
}

func (a *Agent) sandboxAPI(sb *sandboxRec) api.Sandbox {
	out := api.Sandbox{
		Name: sb.Name, Mode: sb.Mode, NetNS: sb.NetNS, Container: sb.Container, Command: sb.Command,
		AutoRemove: sb.AutoRemove, Ports: sb.Ports, Aliases: sb.Aliases, LogPath: sb.LogPath, Origin: sb.Origin,
		Created: sb.Created, ExitCode: sb.ExitCode, State: api.StateCreated,
		Owner: sb.Owner, ContainerID: sb.ContainerID, Nameservers: a.nameservers(sb),
	}
	if sb.Mode == api.ModeHost {
		out.NetNS = a.opts.HostNetNS
	}
	switch {
	case sb.Exited:
		out.State = api.StateExited
	case sb.PID > 0:
		out.State, out.PID = api.StateRunning, sb.PID
	}
	for _, ep := range a.sandboxEndpoints(sb.Name) {
		out.Endpoints = append(out.Endpoints, a.endpointAPI(ep))
	}
	return out
}
