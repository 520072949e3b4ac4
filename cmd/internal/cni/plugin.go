package cni

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// Plugin-specific error codes (the spec leaves 100 and up to plugins).
const (
	ErrInUse     uint = 100 // the address or host port asked for is taken
	ErrExhausted uint = 101 // the network has no address left
)

// Timeouts of one call to the agent: an ADD may wait behind other work
// on a loaded host; STATUS must answer quickly.
var (
	addTimeout    = 60 * time.Second
	statusTimeout = 5 * time.Second
)

// Plugin carries out CNI commands; Stdout receives results, Stderr notes
// (a DEL queued for later).
type Plugin struct {
	Stdout io.Writer
	Stderr io.Writer
}

// Funcs are the plugin's commands for skel.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, Status: p.Status, GC: p.GC}
}

// agentError turns a failed agent call into a spec error.
func agentError(conf *NetConf, what string, err error) error {
	if errors.Is(err, api.ErrUnreachable) {
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("fabric-cni: %s: fabricd is not reachable at %s; try again when it runs", what, conf.Socket), err.Error())
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		code := types.ErrInternal
		switch ae.Code {
		case api.CodeInvalid, api.CodeNotFound:
			code = types.ErrInvalidNetworkConfig
		case api.CodeConflict:
			code = ErrInUse
		case api.CodeExhausted:
			code = ErrExhausted
		}
		return types.NewError(code, fmt.Sprintf("fabric-cni: %s: %s", what, ae.Message), "")
	}
	return types.NewError(types.ErrInternal, fmt.Sprintf("fabric-cni: %s: %v", what, err), "")
}

// Add attaches the container's namespace to the fabric network and
// prints the result.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	if args.Netns == "" {
		return types.NewError(types.ErrInvalidNetNS, "fabric-cni: ADD needs CNI_NETNS, the container's network namespace", "")
	}
	name := SandboxName(conf.Name, args.ContainerID, args.IfName)
	req, err := conf.request(name, args.ContainerID, args.Netns, args.IfName)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), addTimeout)
	defer cancel()
	c := api.NewClient(conf.Socket)
	sb, err := c.CreateSandbox(ctx, req)
	if err != nil {
		return agentError(conf, "attach "+args.Netns+" to network "+conf.Network, err)
	}
	res, err := buildResult(conf, sb, args.Netns)
	if err == nil {
		err = types.PrintResult(res, conf.CNIVersion)
	}
	if err != nil {
		// The runtime will not know the attachment: take it back.
		_ = c.RemoveSandbox(ctx, name)
		return types.NewError(types.ErrInternal, "fabric-cni: build result", err.Error())
	}
	return nil
}

// buildResult makes the spec result of an attachment, appended to the
// previous plugin's result when fabric-cni is chained after another.
func buildResult(conf *NetConf, sb api.Sandbox, netnsPath string) (*types100.Result, error) {
	if len(sb.Endpoints) != 1 {
		return nil, fmt.Errorf("sandbox %s has %d endpoints, want 1", sb.Name, len(sb.Endpoints))
	}
	ep := sb.Endpoints[0]
	res := &types100.Result{CNIVersion: types100.ImplementedSpecVersion}
	if conf.PrevResult != nil {
		prev, err := types100.NewResultFromResult(conf.PrevResult)
		if err != nil {
			return nil, fmt.Errorf("convert prevResult: %w", err)
		}
		res = prev
	}
	if ep.HostIfName != "" {
		res.Interfaces = append(res.Interfaces, &types100.Interface{Name: ep.HostIfName})
	}
	res.Interfaces = append(res.Interfaces, &types100.Interface{Name: ep.IfName, Mac: ep.MAC, Sandbox: netnsPath})
	idx := len(res.Interfaces) - 1
	ip, ipnet, err := net.ParseCIDR(ep.IP)
	if err != nil {
		return nil, fmt.Errorf("endpoint address %q: %w", ep.IP, err)
	}
	cfg := &types100.IPConfig{Interface: &idx, Address: net.IPNet{IP: ip.To4(), Mask: ipnet.Mask}}
	if gw := net.ParseIP(ep.Gateway); gw != nil {
		cfg.Gateway = gw.To4()
		res.Routes = append(res.Routes, &types.Route{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: cfg.Gateway})
	}
	res.IPs = append(res.IPs, cfg)
	res.DNS.Nameservers = append(res.DNS.Nameservers, sb.Nameservers...)
	return res, nil
}

// Del removes the attachment. It succeeds when there is nothing to remove
// (a second DEL, a namespace already gone, an empty CNI_NETNS), and when
// the agent cannot be reached it queues the removal for the agent to
// carry out when it is back: a DEL is never lost.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	name := SandboxName(conf.Name, args.ContainerID, args.IfName)
	ctx, cancel := context.WithTimeout(context.Background(), addTimeout)
	defer cancel()
	err = api.NewClient(conf.Socket).RemoveSandbox(ctx, name)
	if err == nil || isNotFound(err) {
		return nil
	}
	q := api.QueuedRemoval{Sandbox: name, Owner: api.OwnerCNI, ContainerID: args.ContainerID, Queued: time.Now().UTC()}
	if qerr := api.QueueRemoval(conf.Socket, q); qerr != nil {
		return types.NewError(types.ErrTryAgainLater, "fabric-cni: DEL: the agent failed and the removal could not be queued", errors.Join(err, qerr).Error())
	}
	fmt.Fprintf(p.Stderr, "fabric-cni: DEL of %s queued in %s (%v); fabricd completes it when it runs\n", name, api.RemovalQueueDir(conf.Socket), err)
	return nil
}

// Status reports whether ADD can work: the agent answers and the network
// exists (code 50 otherwise) and is healthy (51 otherwise).
func (p *Plugin) Status(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	n, err := api.NewClient(conf.Socket).Network(ctx, conf.Network)
	if err != nil {
		if isNotFound(err) {
			return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("fabric-cni: fabric network %q does not exist (fabricctl network create %s)", conf.Network, conf.Network), "")
		}
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("fabric-cni: fabricd is not ready at %s", conf.Socket), err.Error())
	}
	if n.Health != "" && n.Health != api.HealthOK {
		return types.NewError(types.ErrLimitedConnectivity, fmt.Sprintf("fabric-cni: fabric network %q is %s", conf.Network, n.Health), "")
	}
	return nil
}

// GC removes the attachments of this network configuration that the
// runtime no longer lists, and nothing else: only sandboxes owned by CNI,
// on this configuration's fabric network.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	valid := map[string]bool{}
	for _, at := range conf.ValidAttachments {
		valid[SandboxName(conf.Name, at.ContainerID, at.IfName)] = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), addTimeout)
	defer cancel()
	c := api.NewClient(conf.Socket)
	sbs, err := c.Sandboxes(ctx)
	if err != nil {
		return agentError(conf, "GC", err)
	}
	var errs []error
	for _, sb := range sbs {
		if sb.Owner != api.OwnerCNI || valid[sb.Name] || !onNetwork(sb, conf.Network) {
			continue
		}
		if err := c.RemoveSandbox(ctx, sb.Name); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("remove %s (container %s): %w", sb.Name, sb.ContainerID, err))
		}
	}
	if len(errs) > 0 {
		return agentError(conf, "GC", errors.Join(errs...))
	}
	return nil
}

func onNetwork(sb api.Sandbox, network string) bool {
	for _, ep := range sb.Endpoints {
		if ep.Network == network {
			return true
		}
	}
	return false
}

// isNotFound says the agent answered "not found".
func isNotFound(err error) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Code == api.CodeNotFound
}
