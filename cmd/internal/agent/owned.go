package agent

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/dns"
	"github.com/fabricnet/fabric/datapath/netns"
)

// Sandboxes owned by someone else (a CNI runtime, Docker) are made of a
// namespace that owner created and hands over by path: the agent holds it
// by identity, as `network connect NET PATH` does, and wires one endpoint
// into it with the interface name, address, MAC and published ports the
// owner asks for, in one request. The owner's container ID is kept so that
// its own calls (CNI DEL, GC) find the sandbox again.

// validOwner checks the owner fields of a create request.
func validOwner(req api.SandboxCreate) error {
	switch req.Owner {
	case api.OwnerFabric, api.OwnerCNI, api.OwnerDocker:
	default:
		return invalidf("owner %q is not known (want %q, %q, or none)", req.Owner, api.OwnerCNI, api.OwnerDocker)
	}
	if len(req.ContainerID) > 256 || strings.ContainsAny(req.ContainerID, "\x00\n/") {
		return invalidf("container ID %q is not valid (at most 256 characters, no '/' or control characters)", req.ContainerID)
	}
	if req.NetNS == "" && (req.IfName != "" || req.MAC != "") {
		return invalidf("an interface name or MAC can be asked for only with a namespace path (netns)")
	}
	if req.IfName != "" {
		if err := validIfName(req.IfName); err != nil {
			return invalidf("%v", err)
		}
	}
	if req.MAC != "" {
		mac, err := net.ParseMAC(req.MAC)
		if err != nil || len(mac) != 6 || mac[0]&1 != 0 || slices.Equal(mac, make(net.HardwareAddr, 6)) {
			return invalidf("MAC %q is not a unicast Ethernet address (want e.g. 02:42:ac:11:00:02)", req.MAC)
		}
	}
	return nil
}

// createExternalSandbox makes a sandbox of an existing namespace on one
// network. Asked again for the same owner, container and namespace on the
// same network it returns the sandbox as it is (a runtime that retries an
// ADD gets the same answer).
func (a *Agent) createExternalSandbox(ctx context.Context, req api.SandboxCreate) (api.Sandbox, error) {
	if err := validOwner(req); err != nil {
		return api.Sandbox{}, err
	}
	if len(req.Command) > 0 || req.AutoRemove {
		return api.Sandbox{}, invalidf("a sandbox made of an existing namespace runs no command (its owner runs the container)")
	}
	name := req.Name
	if name == "" {
		name = "ns-" + newID()[:10]
	}
	if err := validName("sandbox", name); err != nil {
		return api.Sandbox{}, err
	}
	if err := dns.ValidLabel(name); err != nil {
		return api.Sandbox{}, invalidf("sandbox name %q is not valid: it is the sandbox's DNS name, one label", name)
	}
	if req.Network == "" || req.Network == api.ModeHost || req.Network == api.ModeNone || strings.HasPrefix(req.Network, "container:") {
		return api.Sandbox{}, invalidf("a sandbox made of an existing namespace needs a network (got %q)", req.Network)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	// A deletion queued while the agent was away goes first, so that the
	// new attachment is not removed by it afterwards.
	a.drainDelQueueFor(ctx, name)
	n, err := a.networkLocked(req.Network)
	if err != nil {
		return api.Sandbox{}, err
	}
	if n.Phase != phaseReady {
		return api.Sandbox{}, conflictf("network %q is being created or removed", n.Name)
	}
	if old := a.sandboxes[name]; old != nil {
		return a.sameExternal(old, n, req)
	}
	var ports []api.Port
	if len(req.Ports) > 0 {
		if n.Internal {
			return api.Sandbox{}, invalidf("network %q is internal: ports cannot be published from it", n.Name)
		}
		if lanDriver(n.Driver) {
			return api.Sandbox{}, invalidf("ports are not published on %s network %q: the sandbox has its own address on the LAN", n.Driver, n.Name)
		}
		if ports, err = a.planPorts(req.Ports); err != nil {
			return api.Sandbox{}, err
		}
	}
	sb, err := a.holdNewExternal(name, req)
	if err != nil {
		return api.Sandbox{}, err
	}
	sb.Ports = ports
	if err := a.attachExternal(ctx, sb, n, req); err != nil {
		a.releaseExternal(sb)
		return api.Sandbox{}, err
	}
	a.log.Info("sandbox attached", "sandbox", sb.Name, "owner", sb.Owner, "container", sb.ContainerID, "network", n.Name, "netns", sb.Origin)
	return a.sandboxAPI(sb), nil
}

// holdNewExternal opens and holds the namespace at req.NetNS for a new
// sandbox named name, and notes what it already has.
func (a *Agent) holdNewExternal(name string, req api.SandboxCreate) (*sandboxRec, error) {
	f, id, err := a.openExternal(req.NetNS)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sb := &sandboxRec{
		Name: name, Mode: api.ModeExternal, Origin: req.NetNS, NSID: id, Owner: req.Owner,
		ContainerID: req.ContainerID, Created: time.Now().UTC(), Phase: phaseReady,
	}
	if err := a.holdExternal(sb, f); err != nil {
		return nil, err
	}
	facts, err := inspectNS(sb.NetNS)
	if err != nil {
		a.releaseExternal(sb)
		return nil, fmt.Errorf("inspect namespace %s: %w", req.NetNS, err)
	}
	sb.KeptRoute, sb.foreignLinks = facts.defaultRoute, facts.links
	return sb, nil
}

// attachExternal plans and programs the sandbox's endpoint on n; on error
// nothing of it is left (the caller lets go of the namespace).
func (a *Agent) attachExternal(ctx context.Context, sb *sandboxRec, n *networkRec, req api.SandboxCreate) error {
	if len(sb.Ports) > 0 && sb.KeptRoute != "" {
		return invalidf("namespace %s has its own %s: ports are published only through the endpoint that carries the default route", req.NetNS, sb.KeptRoute)
	}
	ifName := req.IfName
	if ifName != "" && slices.Contains(sb.foreignLinks, ifName) {
		return conflictf("namespace %s already has an interface named %s", req.NetNS, ifName)
	}
	if ifName == "" {
		ifName = a.freeIfName(sb, sb.foreignLinks)
	}
	ep, err := a.planEndpoint(ctx, n, sb.Name, true, req.IP, req.Aliases)
	if err != nil {
		return err
	}
	ep.IfName = ifName
	if req.MAC != "" {
		mac, _ := net.ParseMAC(req.MAC) // checked by validOwner
		ep.MAC = mac.String()
	}
	if err := a.addEndpoints(ctx, sb, true, []*endpointRec{ep}); err != nil {
		return err
	}
	a.refreshEndpointDNS(ep)
	a.attachDNS(sb)
	return nil
}

// sameExternal answers a create for a sandbox that exists: the same
// attachment again gets the sandbox, anything else a conflict.
func (a *Agent) sameExternal(old *sandboxRec, n *networkRec, req api.SandboxCreate) (api.Sandbox, error) {
	same := old.Mode == api.ModeExternal && old.Owner == req.Owner && old.ContainerID == req.ContainerID && old.Phase == phaseReady
	if same {
		id, err := a.externalID(req.NetNS)
		same = err == nil && id == old.NSID
	}
	if same {
		eps := a.sandboxEndpoints(old.Name)
		same = len(eps) == 1 && eps[0].NetworkID == n.ID && (req.IfName == "" || eps[0].IfName == req.IfName)
	}
	if !same {
		return api.Sandbox{}, conflictf("sandbox %q already exists (owner %q, container %q) and is not this attachment; remove it first", old.Name, old.Owner, old.ContainerID)
	}
	return a.sandboxAPI(old), nil
}

// externalID returns the identity of the namespace at path.
func (a *Agent) externalID(path string) (netns.ID, error) {
	f, id, err := a.openExternal(path)
	if err != nil {
		return netns.ID{}, err
	}
	f.Close()
	return id, nil
}

// nameservers are the resolvers answering in the sandbox.
func (a *Agent) nameservers(sb *sandboxRec) []string {
	if a.dns == nil || !hasResolver(sb) || a.names.resolverFailed(sb.Name) || sb.Phase != phaseReady {
		return nil
	}
	if len(a.sandboxEndpoints(sb.Name)) == 0 {
		return nil
	}
	return []string{dns.Address}
}

// hardwareAddr is the MAC of the endpoint's interface: the one asked for,
// or the one derived from its address.
func (ep *endpointRec) hardwareAddr() net.HardwareAddr {
	if ep.MAC != "" {
		if mac, err := net.ParseMAC(ep.MAC); err == nil {
			return mac
		}
	}
	return macFor(ep.Addr.Addr())
}
