package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/ipam"
	"github.com/fabricnet/fabric/cmd/internal/store"
	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns"
)

const defaultMTU = 1500

func newID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("read random: %v", err))
	}
	return hex.EncodeToString(b)
}

// validName checks a network or sandbox name.
func validName(kind, name string) error {
	if err := netns.ValidName(name); err != nil {
		return invalidf("%s %s", kind, err)
	}
	if name[0] == '-' {
		// It would be taken for an option by fabricctl and every other
		// tool (`fabricctl network rm $(fabricctl network ls -q)`).
		return invalidf("%s name %q must not start with '-' (it would read as an option); start it with a letter or digit", kind, name)
	}
	return nil
}

// networkLocked finds a network by name, full ID or unique ID prefix (≥ 6).
func (a *Agent) networkLocked(ref string) (*networkRec, error) {
	for _, n := range a.networks {
		if n.Name == ref || n.ID == ref {
			return n, nil
		}
	}
	var found *networkRec
	if len(ref) >= 6 {
		for _, n := range a.networks {
			if strings.HasPrefix(n.ID, ref) {
				if found != nil {
					return nil, invalidf("network ID prefix %q is ambiguous", ref)
				}
				found = n
			}
		}
	}
	if found == nil {
		return nil, notFoundf("network %q not found (see `fabricctl network ls`)", ref)
	}
	return found, nil
}

// CreateNetwork validates req completely, then creates the network.
func (a *Agent) CreateNetwork(ctx context.Context, req api.NetworkCreate) (api.Network, error) {
	if req.Driver == api.DriverOverlay {
		return a.createOverlay(ctx, req) // the cluster's vote, without the lock
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.refuseBridgeName(req); err != nil {
		return api.Network{}, err
	}
	n, err := a.planNetwork(req)
	if err != nil {
		return api.Network{}, err
	}
	if err := a.addNetwork(ctx, n); err != nil {
		return api.Network{}, err
	}
	return a.networkAPI(n), nil
}

// planNetwork turns a request into a record without changing anything.
func (a *Agent) planNetwork(req api.NetworkCreate) (*networkRec, error) {
	if err := validName("network", req.Name); err != nil {
		return nil, err
	}
	switch req.Name {
	case "host", "none", "default":
		return nil, invalidf("network name %q is reserved (it is a sandbox network mode)", req.Name)
	}
	if strings.HasPrefix(req.Name, "container:") {
		return nil, invalidf("network name %q is reserved", req.Name)
	}
	for _, n := range a.networks {
		if n.Name == req.Name {
			return nil, conflictf("network %q already exists (id %s)", req.Name, n.ID[:12])
		}
	}
	driver := req.Driver
	if driver == "" {
		driver = api.DriverBridge
	}
	if !knownDriver(driver) {
		return nil, invalidf("driver %q is not supported; available drivers: bridge, overlay, macvlan, ipvlan", driver)
	}
	n := &networkRec{
		ID: newID(), Name: req.Name, Driver: driver, Internal: req.Internal,
		MTU: defaultMTU, Created: time.Now().UTC(), Phase: phaseCreating,
	}
	if err := applyOptions(n, req.Options); err != nil {
		return nil, err
	}
	if driver == api.DriverBridge {
		if n.Bridge == "" {
			n.Bridge = "fb-" + n.ID[:12]
		}
		for _, o := range a.networks {
			if o.Bridge == n.Bridge {
				return nil, conflictf("bridge %s is already used by network %q", n.Bridge, o.Name)
			}
		}
		if err := a.checkBridgeFree(n.Bridge); err != nil {
			return nil, err
		}
	} else {
		if req.Internal {
			return nil, naming(invalidf("internal is not supported by the %s driver: its endpoints sit directly on the parent's LAN", driver), "internal")
		}
		if req.Subnet == "" {
			return nil, naming(invalidf("the %s driver needs subnet (and usually gateway): the subnet of the LAN behind the parent interface", driver), "subnet", "gateway")
		}
		if err := a.checkParent(n); err != nil {
			return nil, err
		}
	}
	if err := a.planSubnet(n, req, ipam.DefaultPools(), nil); err != nil {
		return nil, err
	}
	return n, nil
}

func validIfName(s string) error {
	if s == "" || len(s) > 15 || s == "." || s == ".." || strings.ContainsAny(s, "/: \t\n\x00") {
		return fmt.Errorf("interface name %q must be 1 to 15 characters without '/', ':' or spaces", s)
	}
	return nil
}

// checkBridgeFree refuses a bridge name that an interface fabric does not
// own already uses.
func (a *Agent) checkBridgeFree(name string) error {
	l, err := a.host.Link(name)
	if errors.Is(err, errNoLink) {
		return nil // not there: free
	}
	if err != nil {
		return err
	}
	if !strings.HasPrefix(l.Alias, "fabric:") {
		return conflictf("interface %s already exists on this host and is not fabric's; choose another bridge_name", name)
	}
	return nil
}

// planSubnet fills subnet, gateway and ip-range, picking a free subnet of
// pools when no subnet is given. Neither may overlap a network of this host
// or one of elsewhere (the cluster's subnets).
func (a *Agent) planSubnet(n *networkRec, req api.NetworkCreate, pools, elsewhere []netip.Prefix) error {
	var taken []netip.Prefix
	for _, o := range a.networks {
		taken = append(taken, o.Subnet)
	}
	taken = append(taken, elsewhere...)
	if req.Subnet == "" {
		if req.Gateway != "" || req.IPRange != "" {
			return naming(invalidf("gateway and ip_range need subnet"), "gateway", "ip_range", "subnet")
		}
		routes, err := a.hostRoutes()
		if err != nil {
			return err
		}
		sub, err := ipam.PickSubnet(pools, append(taken, routes...))
		if err != nil {
			return naming(&userError{ErrExhausted, fmt.Sprintf("no free subnet in the default pools: %v; give a subnet", err)}, "subnet")
		}
		n.Subnet = sub
	} else {
		sub, err := netip.ParsePrefix(req.Subnet)
		if err != nil {
			return naming(invalidf("subnet %q is not a CIDR such as 10.10.0.0/24", req.Subnet), "subnet")
		}
		for _, o := range a.networks {
			if ipam.Overlaps(o.Subnet, sub) {
				return conflictf("subnet %s overlaps network %q (%s)", sub, o.Name, o.Subnet)
			}
		}
		for _, o := range elsewhere {
			if ipam.Overlaps(o, sub) {
				return conflictf("subnet %s overlaps %s, a network of the cluster", sub, o)
			}
		}
		n.Subnet = sub
	}
	if req.Gateway != "" {
		gw, err := netip.ParseAddr(req.Gateway)
		if err != nil {
			return naming(invalidf("gateway %q is not an IP address", req.Gateway), "gateway")
		}
		n.Gateway = gw
	}
	if req.IPRange != "" {
		r, err := netip.ParsePrefix(req.IPRange)
		if err != nil {
			return naming(invalidf("ip_range %q is not a CIDR", req.IPRange), "ip_range")
		}
		n.IPRange = r
	}
	if err := ipam.ValidateNetwork(n.Subnet, n.Gateway, n.IPRange); err != nil {
		return invalidf("%v", err)
	}
	if !n.Gateway.IsValid() {
		n.Gateway = ipam.DefaultGateway(n.Subnet)
	}
	if err := ipam.CheckSpecialUse(n.Subnet); err != nil {
		return invalidf("%v", err)
	}
	if req.Subnet != "" && (n.Driver == api.DriverBridge || n.Driver == api.DriverOverlay) {
		// macvlan/ipvlan subnets are the parent's LAN, which the host
		// usually routes already: only bridge and overlay subnets must
		// be new.
		return a.checkHostRoutes(n.Subnet)
	}
	return nil
}

// addNetwork persists n, programs it and marks it ready; on failure it
// leaves nothing behind.
func (a *Agent) addNetwork(ctx context.Context, n *networkRec) (err error) {
	pool, err := ipam.NewPool(n.Subnet, n.Gateway, n.IPRange, n.Exclude)
	if err != nil {
		return invalidf("%v", err)
	}
	if n.Shim {
		shim, err := pool.Allocate("host shim of network " + n.Name)
		if err != nil {
			return classifyIPAM(err)
		}
		n.HostShim = shim
	}
	if err := a.store.Update(func(tx *store.Tx) error { return tx.Put(bucketNetworks, n.ID, n) }); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = a.dp.DeleteNetwork(ctx, n.datapath())
			_ = a.store.Update(func(tx *store.Tx) error { return tx.Delete(bucketNetworks, n.ID) })
		}
	}()
	if err := a.dp.EnsureNetwork(ctx, n.datapath()); err != nil {
		if errors.Is(err, datapath.ErrParentMissing) || errors.Is(err, datapath.ErrInvalid) {
			return invalidf("create network %s: %v", n.Name, err)
		}
		return fmt.Errorf("create network %s: %w", n.Name, err)
	}
	n.Phase = phaseReady
	if err := a.store.Update(func(tx *store.Tx) error { return tx.Put(bucketNetworks, n.ID, n) }); err != nil {
		return err
	}
	a.indexNetwork(n, pool)
	a.syncNamesRoutes()
	a.warnNamesUnreachable(n)
	a.log.Info("network created", "name", n.Name, "subnet", n.Subnet, "bridge", n.Bridge)
	return nil
}

func (a *Agent) ensureDefaultNetwork(ctx context.Context) error {
	for _, n := range a.networks {
		if n.Default {
			return nil
		}
	}
	req := api.NetworkCreate{Name: DefaultNetworkName, Options: map[string]string{"bridge_name": DefaultBridge}}
	if a.opts.DefaultSubnet.IsValid() {
		req.Subnet = a.opts.DefaultSubnet.String()
	}
	n, err := a.planNetwork(req)
	if err != nil {
		return err
	}
	n.Default = true
	return a.addNetwork(ctx, n)
}

// RemoveNetwork removes a network that has no endpoints.
func (a *Agent) RemoveNetwork(ctx context.Context, ref string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	n, err := a.networkLocked(ref)
	if err != nil {
		return err
	}
	if n.Default {
		return invalidf("network %q is the default network and cannot be removed", n.Name)
	}
	var users []string
	for _, ep := range a.endpoints {
		if ep.NetworkID == n.ID {
			users = append(users, ep.Sandbox)
		}
	}
	if len(users) > 0 {
		sort.Strings(users)
		return conflictf("network %q has %d endpoint(s) (sandboxes %s); disconnect or remove them first", n.Name, len(users), strings.Join(users, ", "))
	}
	if n.Driver == api.DriverOverlay {
		return a.removeOverlay(ctx, n)
	}
	return a.deleteNetwork(ctx, n)
}

func (a *Agent) deleteNetwork(ctx context.Context, n *networkRec) error {
	n.Phase = phaseRemoving
	if err := a.store.Update(func(tx *store.Tx) error { return tx.Put(bucketNetworks, n.ID, n) }); err != nil {
		return err
	}
	if err := a.dp.DeleteNetwork(ctx, n.datapath()); err != nil {
		return fmt.Errorf("remove network %s: %w", n.Name, err)
	}
	if err := a.store.Update(func(tx *store.Tx) error { return tx.Delete(bucketNetworks, n.ID) }); err != nil {
		return err
	}
	a.unindexNetwork(n.ID)
	a.syncNamesRoutes()
	a.health.clearUnhealthy(n.ID)
	a.log.Info("network removed", "name", n.Name)
	return nil
}

// Networks lists networks, sorted by name.
func (a *Agent) Networks() []api.Network {
	a.mu.Lock()
	defer a.mu.Unlock()
	return byName(a.networks, a.networkAPI, func(n api.Network) string { return n.Name })
}

// byName turns records into their API form, sorted by name.
func byName[K comparable, R, T any](recs map[K]R, toAPI func(R) T, name func(T) string) []T {
	out := make([]T, 0, len(recs))
	for _, r := range recs {
		out = append(out, toAPI(r))
	}
	sort.Slice(out, func(i, j int) bool { return name(out[i]) < name(out[j]) })
	return out
}

// Network returns one network.
func (a *Agent) Network(ref string) (api.Network, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n, err := a.networkLocked(ref)
	if err != nil {
		return api.Network{}, err
	}
	return a.networkAPI(n), nil
}

func (a *Agent) networkAPI(n *networkRec) api.Network {
	count := 0
	for _, ep := range a.endpoints {
		if ep.NetworkID == n.ID {
			count++
		}
	}
	used, free := 0, 0
	if p := a.pools[n.ID]; p != nil {
		used, free = p.Used(), p.Free()
	}
	health := api.HealthOK
	if why, bad := a.health.unhealthyWhy(n.ID); bad {
		health = api.HealthUnhealthy + ": " + why
	}
	out := n.api(count, used, free, health)
	for _, r := range a.glue.remotesOf(n.ID) {
		out.Remotes = append(out.Remotes, api.Remote{IP: r.Addr.String(), MAC: net.HardwareAddr(r.MAC).String(), Node: r.Node.String()})
	}
	return a.withoutBridge(out)
}
