package cni

import (
	"context"
	"fmt"
	"net"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns"
)

// Check verifies the attachment is still as ADD made it: the agent has it
// for this container on this network, with the address the runtime was
// told, and the interface in the namespace carries that address.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	bad := func(format string, a ...any) error {
		return types.NewError(types.ErrInternal, "fabric-cni: CHECK: "+fmt.Sprintf(format, a...), "")
	}
	name := SandboxName(conf.Name, args.ContainerID, args.IfName)
	ctx, cancel := context.WithTimeout(context.Background(), addTimeout)
	defer cancel()
	sb, err := api.NewClient(conf.Socket).Sandbox(ctx, name)
	if err != nil {
		return agentError(conf, "CHECK", err)
	}
	if sb.Owner != api.OwnerCNI || sb.ContainerID != args.ContainerID {
		return bad("sandbox %s belongs to %q container %q, not to CNI container %q", name, sb.Owner, sb.ContainerID, args.ContainerID)
	}
	if len(sb.Endpoints) != 1 || sb.Endpoints[0].Network != conf.Network || sb.Endpoints[0].IfName != args.IfName {
		return bad("sandbox %s is not attached to network %q as %s", name, conf.Network, args.IfName)
	}
	ep := sb.Endpoints[0]
	ip, ipnet, err := net.ParseCIDR(ep.IP)
	if err != nil {
		return bad("endpoint address %q: %v", ep.IP, err)
	}
	if conf.PrevResult == nil {
		return bad("no prevResult: the runtime must send ADD's result with CHECK")
	}
	prev, err := types100.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return bad("prevResult: %v", err)
	}
	found := false
	for _, c := range prev.IPs {
		if c.Address.IP.Equal(ip) {
			found = true
		}
	}
	if !found {
		return bad("prevResult does not list the attachment's address %s", ep.IP)
	}
	return checkInterface(args.Netns, args.IfName, net.IPNet{IP: ip, Mask: ipnet.Mask})
}

// checkInterface verifies the interface ifName in the namespace at path
// is up and carries addr.
func checkInterface(path, ifName string, addr net.IPNet) error {
	h, err := netns.HandleAt(path)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, "fabric-cni: CHECK: open namespace "+path, err.Error())
	}
	defer h.Close()
	link, err := h.LinkByName(ifName)
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("fabric-cni: CHECK: interface %s is missing in %s", ifName, path), err.Error())
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		return types.NewError(types.ErrInternal, fmt.Sprintf("fabric-cni: CHECK: interface %s in %s is down", ifName, path), "")
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("fabric-cni: CHECK: list addresses of %s", ifName), err.Error())
	}
	for _, a := range addrs {
		if a.IPNet.String() == addr.String() {
			return nil
		}
	}
	return types.NewError(types.ErrInternal, fmt.Sprintf("fabric-cni: CHECK: interface %s in %s does not carry %s", ifName, path, addr.String()), "")
}
