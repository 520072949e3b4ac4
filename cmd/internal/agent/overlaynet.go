package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/fabricnet/fabric/cluster"
	"github.com/fabricnet/fabric/cmd/internal/api"
)

// publishAllLocked declares this node's overlay endpoints to the cluster,
// withdrawing any record of this node the cluster still has for endpoints
// that are gone (removed while the agent was down).
func (a *Agent) publishAllLocked() {
	if a.cl == nil {
		return
	}
	var eps []cluster.Endpoint
	for _, ep := range a.endpoints {
		if rec, ok := a.clusterEndpoint(ep); ok && ep.Phase == phaseReady {
			eps = append(eps, rec)
		}
	}
	if err := a.cl.SyncEndpoints(eps); err != nil {
		a.log.Warn("announce endpoints", "err", err)
	}
}

// clusterEndpoint is the gossiped record of an overlay endpoint.
func (a *Agent) clusterEndpoint(ep *endpointRec) (cluster.Endpoint, bool) {
	n := a.networks[ep.NetworkID]
	if n == nil || n.Driver != api.DriverOverlay {
		return cluster.Endpoint{}, false
	}
	mac, _ := net.ParseMAC(ep.MAC)
	return cluster.Endpoint{
		ID: ep.ID, Network: n.Name, IP: ep.Addr.Addr(), MAC: mac,
		Name: ep.Sandbox, Aliases: ep.Aliases,
	}, true
}

// releaseOverlay gives an endpoint's address back and withdraws its record.
func (a *Agent) releaseOverlay(ep *endpointRec) {
	n := a.networks[ep.NetworkID]
	if a.cl == nil || n == nil || n.Driver != api.DriverOverlay {
		return
	}
	if err := a.cl.Unpublish(ep.ID); err != nil && !errors.Is(err, cluster.ErrNotFound) {
		a.log.Warn("withdraw endpoint record", "endpoint", ep.ID, "err", err)
	}
	if err := a.cl.ReleaseIP(n.Name, ep.Addr.Addr()); err != nil && !errors.Is(err, cluster.ErrNotFound) {
		a.log.Warn("release overlay address", "endpoint", ep.ID, "err", err)
	}
}

// clusterErr maps a cluster error to the API's kinds.
func clusterErr(err error) error {
	switch {
	case errors.Is(err, cluster.ErrInvalid):
		return &userError{ErrInvalid, err.Error()}
	case errors.Is(err, cluster.ErrNotFound):
		return &userError{ErrNotFound, err.Error()}
	case errors.Is(err, cluster.ErrConflict), errors.Is(err, cluster.ErrInUse):
		return &userError{ErrConflict, err.Error()}
	case errors.Is(err, cluster.ErrExhausted):
		return &userError{ErrExhausted, err.Error()}
	}
	return err
}

// createOverlay creates a cluster-scoped network and sets it up here. The
// cluster's vote on it waits for every member counted alive (seconds for
// one that stopped answering), so it runs without the agent lock: the
// request is checked under the lock, voted on without it, and set up here
// under it again (unless the cluster sync did that meanwhile).
func (a *Agent) createOverlay(ctx context.Context, req api.NetworkCreate) (api.Network, error) {
	if a.cl == nil {
		return api.Network{}, invalidf("overlay networks need a cluster: start fabricd with --cluster-bind IP (and --cluster-join on the other nodes)")
	}
	spec, err := a.planOverlay(req)
	if err != nil {
		return api.Network{}, err
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	cn, err := a.cl.CreateNetwork(cctx, spec)
	if err != nil {
		return api.Network{}, clusterErr(fmt.Errorf("create overlay network %q: %w", req.Name, err))
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.networks[overlayID(cn.ID)] == nil {
		if err := a.materialize(ctx, cn); err != nil {
			_ = a.cl.RemoveNetwork(cn.Name)
			return api.Network{}, err
		}
	}
	a.saveClusterLocked(true)
	return a.networkAPI(a.networks[overlayID(cn.ID)]), nil
}

// planOverlay checks an overlay network request against this host and
// the cluster and returns what to propose to the cluster.
func (a *Agent) planOverlay(req api.NetworkCreate) (cluster.NetworkSpec, error) {
	if err := validName("network", req.Name); err != nil {
		return cluster.NetworkSpec{}, err
	}
	if req.IPRange != "" {
		return cluster.NetworkSpec{}, naming(invalidf("ip_range is not supported by the overlay driver: nodes lease blocks of the subnet (the block_bits option sets their size)"), "ip_range")
	}
	spec, err := overlaySpec(req)
	if err != nil {
		return cluster.NetworkSpec{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, n := range a.networks {
		if n.Name == req.Name {
			return cluster.NetworkSpec{}, conflictf("network %q already exists (id %s)", req.Name, n.ID[:12])
		}
	}
	var clusterSubnets []netip.Prefix
	for _, cn := range a.cl.Networks() {
		clusterSubnets = append(clusterSubnets, cn.Subnet)
	}
	planned := &networkRec{Name: req.Name, Driver: api.DriverOverlay}
	if err := a.planSubnet(planned, req, overlayPools, clusterSubnets); err != nil {
		return cluster.NetworkSpec{}, err
	}
	spec.Subnet, spec.Gateway = planned.Subnet, planned.Gateway
	if _, err := a.overlayMTU(); err != nil {
		return cluster.NetworkSpec{}, invalidf("%v", err)
	}
	return spec, nil
}

// overlaySpec turns the options of an overlay network request into the
// cluster's network spec (subnet and gateway are planned by the caller).
func overlaySpec(req api.NetworkCreate) (cluster.NetworkSpec, error) {
	spec := cluster.NetworkSpec{Name: req.Name, Internal: req.Internal, Options: map[string]string{}}
	for k, v := range req.Options {
		switch k {
		case "mtu", "com.docker.network.driver.mtu":
			m, err := strconv.Atoi(v)
			if err != nil || m < 576 || m > 65535 {
				return cluster.NetworkSpec{}, invalidf("option mtu=%q must be a number from 576 to 65535", v)
			}
			spec.Options["mtu"] = v
		case "block_bits":
			b, err := strconv.Atoi(v)
			if err != nil || b < 1 || b > 30 {
				return cluster.NetworkSpec{}, invalidf("option block_bits=%q must be a prefix length from 1 to 30 (the size of the blocks nodes lease)", v)
			}
			spec.BlockBits = b
			spec.Options[k] = v
		case "vni":
			vni, err := strconv.ParseUint(v, 10, 32)
			if err != nil || vni == 0 || vni >= 1<<24 {
				return cluster.NetworkSpec{}, invalidf("option vni=%q must be a number from 1 to 16777215", v)
			}
			spec.VNI = uint32(vni)
			spec.Options[k] = v
		default:
			return cluster.NetworkSpec{}, invalidf("option %q is not supported by the overlay driver (supported: mtu, block_bits, vni)", k)
		}
	}
	return spec, nil
}

// overlayPools are where overlay subnets come from when none is given:
// 10.0.0.0/8 in /16s from 10.20.0.0, as Docker swarm's 10.0.0.0/8 pool.
var overlayPools = func() []netip.Prefix {
	var out []netip.Prefix
	for i := 20; i < 250; i++ {
		out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16))
	}
	return out
}()

// removeOverlay removes a cluster network everywhere; refused while any
// node has endpoints on it.
func (a *Agent) removeOverlay(ctx context.Context, n *networkRec) error {
	if a.cl == nil {
		return invalidf("network %q is an overlay network but this agent is not in a cluster", n.Name)
	}
	if eps := a.cl.Endpoints(n.Name); len(eps) > 0 {
		var where []string
		for _, ep := range eps {
			where = append(where, ep.Name+"@"+ep.Node)
		}
		sort.Strings(where)
		return conflictf("overlay network %q has %d endpoint(s) in the cluster (%s); disconnect or remove them first", n.Name, len(eps), strings.Join(where, ", "))
	}
	if err := a.cl.RemoveNetwork(n.Name); err != nil && !errors.Is(err, cluster.ErrNotFound) {
		return clusterErr(err)
	}
	a.saveClusterLocked(true)
	a.dropRemotesLocked(n.ID)
	return a.deleteNetwork(ctx, n)
}
