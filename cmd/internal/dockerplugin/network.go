package dockerplugin

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath"
)

// optDriver selects the fabric driver behind a Docker network.
const optDriver = "fabric.driver"

// passedOptions are the -o keys handed to fabric's driver as they are.
var passedOptions = map[string]bool{"parent": true, "mtu": true, "macvlan_mode": true, "ipvlan_mode": true, "host_shim": true}

// Docker's own keys that arrive in the generic options.
const (
	keyGeneric  = "com.docker.network.generic"
	keyInternal = "com.docker.network.internal"
)

func (p *Plugin) createNetwork(req createNetworkRequest) (any, error) {
	n, err := planNetwork(req)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if old := p.st.Networks[n.ID]; old != nil {
		return struct{}{}, nil // a repeated call
	}
	p.st.Networks[n.ID] = n
	if err := p.saveLocked(); err != nil {
		delete(p.st.Networks, n.ID)
		return nil, err
	}
	p.bindLater(n.ID)
	return struct{}{}, nil
}

// planNetwork checks what Docker asks for and turns it into a record.
func planNetwork(req createNetworkRequest) (*netRec, error) {
	if len(req.IPv6Data) > 0 {
		return nil, errors.New("fabric: IPv6 is not supported yet; create the network without --ipv6")
	}
	if len(req.IPv4Data) != 1 {
		return nil, errors.New("fabric: a fabric network has exactly one IPv4 subnet; use --ipam-driver fabric and at most one --subnet")
	}
	d := req.IPv4Data[0]
	if d.AddressSpace != addressSpace {
		return nil, errors.New("fabric: create the network with --ipam-driver fabric: its addresses must come from fabric's pools (Docker's default IPAM knows nothing of fabric's other networks and hosts)")
	}
	n := &netRec{ID: req.NetworkID, Driver: api.DriverBridge, Subnet: d.Pool, Options: map[string]string{}}
	if gw, err := netip.ParsePrefix(d.Gateway); err == nil {
		n.Gateway = gw.Addr().String()
	}
	if internal, ok := req.Options[keyInternal].(bool); ok {
		n.Internal = internal
	}
	generic, _ := req.Options[keyGeneric].(map[string]any)
	keys := make([]string, 0, len(generic))
	for k := range generic {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v, ok := generic[k].(string)
		if !ok {
			return nil, fmt.Errorf("fabric: option %s must be a string", k)
		}
		switch {
		case k == optDriver:
			switch v {
			case api.DriverBridge, api.DriverOverlay, api.DriverMacvlan, api.DriverIPvlan:
				n.Driver = v
			default:
				return nil, fmt.Errorf("fabric: -o %s=%s: the driver must be bridge, overlay, macvlan or ipvlan", k, v)
			}
		case passedOptions[k]:
			n.Options[k] = v
		default:
			return nil, fmt.Errorf("fabric: unknown option -o %s (fabric knows %s, parent, mtu, macvlan_mode, ipvlan_mode, host_shim)", k, optDriver)
		}
	}
	return n, nil
}

// bindLater learns the network's name from Docker in the background and
// binds it; the caller holds p.mu.
func (p *Plugin) bindLater(id string) {
	if p.ctx == nil {
		return
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		if _, err := p.bind(id); err != nil {
			p.log.Warn("docker network not backed by fabric", "network", id[:12], "err", err)
		}
	}()
}

// bind makes sure Docker network id is backed by the fabric network of
// its name and returns that name: created if missing, adopted if it has
// the same settings, refused otherwise (the refusal is kept and shown on
// every use of the network).
func (p *Plugin) bind(id string) (string, error) {
	p.bindMu.Lock()
	defer p.bindMu.Unlock()
	p.mu.Lock()
	n := p.st.Networks[id]
	var rec netRec
	if n != nil {
		rec = *n
	}
	p.mu.Unlock()
	switch {
	case n == nil:
		return "", fmt.Errorf("fabric: unknown network %s (was it created while fabric's plugin was not running?)", shortID(id))
	case rec.Err != "":
		return "", errors.New(rec.Err)
	case rec.Name != "":
		return rec.Name, nil
	}
	ctx, cancel := context.WithTimeout(p.lifetime(), 15*time.Second)
	defer cancel()
	name, err := p.docker.waitNetworkName(ctx, id)
	if err != nil {
		return "", fmt.Errorf("fabric: %w", err)
	}
	rec.Name = name
	created, err := p.backNetwork(ctx, &rec)
	p.mu.Lock()
	defer p.mu.Unlock()
	n = p.st.Networks[id]
	if n == nil { // removed meanwhile
		if created {
			_ = p.b.RemoveNetwork(ctx, name)
		}
		return "", fmt.Errorf("fabric: network %s was removed", name)
	}
	if err != nil {
		n.Err = fmt.Sprintf("fabric: Docker network %q cannot be backed by fabric: %v", name, err)
	} else {
		n.Name, n.Created = name, created
		// A fabric network left by a removed Docker network of the same
		// name is this one's now (and no longer to be removed).
		for id, o := range p.st.Networks {
			if o.Removed && o.Name == name {
				delete(p.st.Networks, id)
				n.Created = true
			}
		}
	}
	if serr := p.saveLocked(); serr != nil {
		return "", serr
	}
	if n.Err != "" {
		return "", errors.New(n.Err)
	}
	p.log.Info("docker network backed by fabric", "docker_id", shortID(id), "network", name, "created", created)
	return name, nil
}

// backNetwork creates the fabric network rec.Name or adopts it.
func (p *Plugin) backNetwork(ctx context.Context, rec *netRec) (created bool, err error) {
	have, err := p.b.Network(rec.Name)
	if err == nil {
		if why := mismatch(have, rec); why != "" {
			return false, fmt.Errorf("fabric network %q exists with other settings (%s); remove it or create the Docker network with its settings", rec.Name, why)
		}
		return false, nil
	}
	if !p.opts.IsNotFound(err) {
		return false, err
	}
	_, err = p.b.CreateNetwork(ctx, api.NetworkCreate{
		Name: rec.Name, Driver: rec.Driver, Subnet: rec.Subnet, Gateway: rec.Gateway,
		IPRange: p.ipRangeOf(rec.Subnet), Internal: rec.Internal, Options: rec.Options,
	})
	if err != nil {
		return false, err
	}
	return true, nil
}

// ipRangeOf is the --ip-range Docker gave with the subnet.
func (p *Plugin) ipRangeOf(subnet string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pl := range p.st.Pools {
		if pl.Subnet == subnet {
			return pl.IPRange
		}
	}
	return ""
}

// mismatch says how an existing fabric network differs from what Docker
// asks for ("" when it may be adopted).
func mismatch(have api.Network, want *netRec) string {
	var diff []string
	if have.Driver != want.Driver {
		diff = append(diff, fmt.Sprintf("driver %s, not %s", have.Driver, want.Driver))
	}
	if have.Subnet != want.Subnet {
		diff = append(diff, fmt.Sprintf("subnet %s, not %s", have.Subnet, want.Subnet))
	}
	if want.Gateway != "" && have.Gateway != want.Gateway {
		diff = append(diff, fmt.Sprintf("gateway %s, not %s", have.Gateway, want.Gateway))
	}
	if have.Internal != want.Internal {
		diff = append(diff, fmt.Sprintf("internal %v, not %v", have.Internal, want.Internal))
	}
	return strings.Join(diff, "; ")
}

// deleteNetwork removes the fabric network made for a Docker network.
// Docker removes its network whatever a plugin answers, so a fabric
// network still in use (an overlay with containers on other hosts,
// fabric's own sandboxes) is kept and its removal retried until it is
// free (removeLeftovers).
func (p *Plugin) deleteNetwork(req networkRequest) (any, error) {
	p.mu.Lock()
	n := p.st.Networks[req.NetworkID]
	p.mu.Unlock()
	if n == nil {
		return struct{}{}, nil
	}
	if n.Created && n.Name != "" {
		if err := p.b.RemoveNetwork(p.lifetime(), n.Name); err != nil && !p.opts.IsNotFound(err) {
			p.log.Warn("docker network removed; fabric's stays until it is free", "network", n.Name, "reason", err)
			p.mu.Lock()
			defer p.mu.Unlock()
			n.Removed = true
			if serr := p.saveLocked(); serr != nil {
				return nil, serr
			}
			return struct{}{}, nil // Docker removes its network anyway
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.st.Networks, req.NetworkID)
	return struct{}{}, p.saveLocked()
}

// removeLeftovers retries, every interval until ctx ends, the removal of
// fabric networks whose Docker network is gone.
func (p *Plugin) removeLeftovers(ctx context.Context, every time.Duration) {
	datapath.Every(ctx, every, func() { p.removeLeftoversOnce(ctx) })
}

// removeLeftoversOnce is one try of removeLeftovers.
func (p *Plugin) removeLeftoversOnce(ctx context.Context) {
	p.mu.Lock()
	var left []*netRec
	for _, n := range p.st.Networks {
		if n.Removed {
			left = append(left, n)
		}
	}
	p.mu.Unlock()
	for _, n := range left {
		err := p.b.RemoveNetwork(ctx, n.Name)
		if err != nil && !p.opts.IsNotFound(err) {
			continue
		}
		p.log.Info("fabric network of a removed Docker network is free now and removed", "network", n.Name)
		p.mu.Lock()
		delete(p.st.Networks, n.ID)
		if err := p.saveLocked(); err != nil {
			p.log.Warn("save docker plugin state", "err", err)
		}
		p.mu.Unlock()
	}
}

// lifetime is the plugin's context (background before Run).
func (p *Plugin) lifetime() context.Context {
	if p.ctx == nil {
		return context.Background()
	}
	return p.ctx
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
