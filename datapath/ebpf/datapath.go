package ebpf

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// Datapath is the eBPF datapath: bridge and overlay networks are served by
// the programs (Forwarder) on each endpoint's host veth, macvlan/ipvlan
// networks by the shared plumbing, as on the kernel datapath. Its methods
// are safe for concurrent use; they run one at a time.
type Datapath struct {
	log    *slog.Logger
	fwd    *Forwarder
	tunnel datapath.Tunnel

	mu   sync.Mutex
	host *plumb.Host // nil once closed
	// ports are the published ports of the endpoints ensured, by
	// endpoint ID: a host port two endpoints publish is refused.
	ports map[string][]datapath.PortMapping
	skips datapath.SkipLog
	// pass counts the links a Sync had to make or prune (the forwarder
	// counts its programs and map entries), and keeps its error.
	pass datapath.Pass
	// bigTCP: endpoint host veths get BIG TCP's IPv4 GSO size (bigtcp.go).
	bigTCP bool
}

var _ datapath.Datapath = (*Datapath)(nil)

// errClosed is returned by every method after Close.
var errClosed = errors.New("eBPF datapath is closed")

// New loads the programs (re-opening pinned maps) and prepares the host
// namespace. An error wrapping ErrUnsupported means this host cannot run
// the eBPF datapath; one wrapping ErrRejected, that the verifier refused a
// program of ours.
func New(log *slog.Logger, opts Options) (_ *Datapath, err error) {
	if log == nil {
		log = slog.Default()
	}
	fwd, err := NewForwarder(log, opts)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			fwd.Close()
		}
	}()
	host, err := plumb.Open(fwd.log, opts.NetNSPath, plumb.Faults{})
	if err != nil {
		return nil, err
	}
	// Sandboxes on macvlan/ipvlan networks pass no program on their way
	// to the host's INPUT through a host shim: plumb's shim guard table
	// keeps them out of the same ports the endpoint program closes.
	host.SetGuardPorts(opts.GuardPorts)
	host.SetShimRoutes(opts.ShimRoutes)
	// The programs do NAT and published ports: a table left by a
	// kernel-datapath run would translate their traffic twice.
	if err := netns.Do(host.NSPath(), plumb.DeleteNFTable); err != nil {
		fwd.log.Warn("cannot remove the kernel datapath's nftables table", "err", err)
	}
	return &Datapath{log: fwd.log, fwd: fwd, tunnel: opts.Tunnel, host: host, ports: map[string][]datapath.PortMapping{},
		bigTCP: bigTCPSupported(host.NL())}, nil
}

// Close releases handles; programs, links and maps stay (pinned), and so
// do networks and endpoints: a restarted agent finds them again.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.host == nil {
		return nil
	}
	err := errors.Join(d.fwd.Close(), d.host.Close())
	d.host = nil
	return err
}

// EnsureNetwork programs a bridge or overlay network into the maps, or
// makes a macvlan/ipvlan network's host side (an error wrapping
// datapath.ErrParentMissing if its parent is absent or down).
func (d *Datapath) EnsureNetwork(ctx context.Context, n datapath.Network) error {
	if err := plumb.ValidateNetwork(n); err != nil {
		return err
	}
	return d.locked(func() error {
		if plumb.UsesParent(n) {
			return d.host.EnsureLANNetwork(n)
		}
		return d.fwd.EnsureNetwork(n)
	})
}

// locked runs f under the lock, unless the datapath is closed.
func (d *Datapath) locked(f func() error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.host == nil {
		return errClosed
	}
	return f()
}

// DeleteNetwork forgets a network; a missing one is not an error.
func (d *Datapath) DeleteNetwork(ctx context.Context, n datapath.Network) error {
	if n.ID == "" {
		return plumb.Invalidf("network without ID")
	}
	return d.locked(func() error {
		if plumb.UsesParent(n) {
			return d.host.DeleteLANNetwork(n)
		}
		err := d.fwd.DeleteNetwork(n)
		if err == nil {
			d.skips.Forget(n.ID)
		}
		return err
	})
}

// EnsureEndpoint creates or repairs the endpoint's veth pair and programs
// its host side, or makes a macvlan/ipvlan child.
func (d *Datapath) EnsureEndpoint(ctx context.Context, n datapath.Network, ep datapath.Endpoint) error {
	if err := plumb.ValidateNetwork(n); err != nil {
		return err
	}
	if err := plumb.ValidateEndpoint(n, ep); err != nil {
		return err
	}
	return d.locked(func() error {
		if plumb.UsesParent(n) {
			_, err := d.host.EnsureChild(n, ep)
			return err
		}
		if err := d.portConflict(ep); err != nil {
			return err
		}
		_, err := d.ensureVeth(n, ep)
		if err == nil {
			d.setPorts(ep)
		}
		return err
	})
}

// ensureVeth makes the veth pair with a routed host side (no bridge) and
// hands the host veth to the programs once the sandbox side is ready.
func (d *Datapath) ensureVeth(n datapath.Network, ep datapath.Endpoint) (bool, error) {
	return d.host.EnsureVeth(n, ep, plumb.VethSides{
		Host: func(host netlink.Link, created bool) error { return d.routedHostSide(host, n, created) },
		After: func(_ *plumb.Sandbox, host netlink.Link) error {
			return d.fwd.EnsureEndpoint(n, ep, host)
		},
	})
}

// routedHostSide readies a host veth the programs serve: on no bridge (one
// left by a kernel-datapath run is detached), up, right MTU.
func (d *Datapath) routedHostSide(host netlink.Link, n datapath.Network, created bool) error {
	if host.Attrs().MasterIndex != 0 {
		if err := d.host.NL().LinkSetNoMaster(host); err != nil {
			return fmt.Errorf("detach from bridge: %w", err)
		}
	}
	d.ensureBigTCP(host)
	if created {
		return nil
	}
	return d.host.RepairHostMTUUp(host, n)
}

// portConflict refuses a host port another endpoint already publishes on
// an overlapping host address: only one could win.
func (d *Datapath) portConflict(ep datapath.Endpoint) error {
	for id, other := range d.ports {
		if id == ep.ID {
			continue
		}
		if p, clash := plumb.PortClash(ep.Ports, other); clash {
			return plumb.Invalidf("endpoint %s: host port %d/%s is already published by endpoint %s", ep.ID, p.HostPort, p.Proto, id)
		}
	}
	return nil
}

func (d *Datapath) setPorts(ep datapath.Endpoint) {
	if len(ep.Ports) == 0 {
		delete(d.ports, ep.ID)
		return
	}
	d.ports[ep.ID] = append([]datapath.PortMapping(nil), ep.Ports...)
}

// DeleteEndpoint forgets the endpoint's host side and removes its veth
// (the peer goes with it), or a macvlan/ipvlan child.
func (d *Datapath) DeleteEndpoint(ctx context.Context, n datapath.Network, ep datapath.Endpoint) error {
	if ep.ID == "" {
		return plumb.Invalidf("endpoint without ID")
	}
	return d.locked(func() error {
		if plumb.UsesParent(n) {
			return d.host.DeleteChild(n, ep)
		}
		if err := d.fwd.DeleteEndpoint(n, ep); err != nil {
			return err
		}
		delete(d.ports, ep.ID)
		return d.host.DeleteVeth(ep)
	})
}

// SetRemotes replaces the remote endpoints of overlay network n in the
// remotes map. Unusable entries (see datapath.FilterRemotes) are skipped,
// logged once and counted.
func (d *Datapath) SetRemotes(ctx context.Context, n datapath.Network, remotes []datapath.Remote) error {
	if err := plumb.ValidateNetwork(n); err != nil {
		return err
	}
	if n.Driver != datapath.DriverOverlay {
		return plumb.Invalidf("network %s: remotes need an overlay network, not %q", n.ID, n.Driver)
	}
	remotes = d.usableRemotes(n, remotes)
	return d.locked(func() error { return d.fwd.SetRemotes(n, remotes) })
}

// usableRemotes is FilterRemotes for this host, with what it skipped
// logged and counted once per entry.
func (d *Datapath) usableRemotes(n datapath.Network, remotes []datapath.Remote) []datapath.Remote {
	keep, skipped := datapath.FilterRemotes(n, d.tunnel.Local, remotes)
	d.skips.Note(d.log, n.ID, skipped)
	return keep
}

// Status reports the programs' mode, attach points and sizes.
func (d *Datapath) Status(ctx context.Context) datapath.Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.fwd.Status()
	if d.host != nil && d.host.LANNetworks() > 0 {
		st.Details = append(st.Details, fmt.Sprintf("%d macvlan/ipvlan networks", d.host.LANNetworks()))
		st.Warnings = append(st.Warnings, d.host.LANWarnings()...)
	}
	if d.pass.LastErr != nil {
		st.Warnings = append(st.Warnings, "last sync: "+d.pass.LastErr.Error())
	}
	return st
}

// Metrics reads the programs' counters, and adds the remotes skipped and
// the repairs.
func (d *Datapath) Metrics() (datapath.Metrics, error) {
	m, err := d.fwd.Metrics()
	if err != nil {
		return m, err
	}
	d.mu.Lock()
	if d.host != nil {
		err = d.host.AddShimGuardDrops(&m)
	}
	d.mu.Unlock()
	if err != nil {
		return m, err
	}
	m.SkippedRemotes = d.skips.Counts()
	for k, v := range d.pass.Repairs.Counts() {
		if m.Repairs == nil {
			m.Repairs = map[string]uint64{}
		}
		m.Repairs[k] += v
	}
	return m, nil
}

// Sync is the one reconcile pass, at start and every repair interval:
// links no record names go (a kernel-datapath run's bridges and VXLAN
// devices too), what s names is ensured, and maps and pins end up holding
// exactly s. Errors of single objects are joined, not fatal to the rest.
func (d *Datapath) Sync(ctx context.Context, s datapath.State) error {
	return d.locked(func() error {
		return d.pass.Run(func() error { return d.sync(ctx, s) })
	})
}

func (d *Datapath) repaired(object, name string) { d.pass.Repaired(d.log, object, name) }

func (d *Datapath) sync(ctx context.Context, s datapath.State) error {
	p, errs := plumb.NewPlan(s)
	// The tunnel device is the programs', whatever its alias.
	p.Parents[tunDevice] = true
	if err := d.host.Prune(p.Keep, p.Parents, func(name string) { d.repaired(datapath.RepairStale, name) }); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, d.host.SyncLANNetworks(ctx, p)...)
	for _, id := range p.IDs {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, err)...)
		}
		if n := p.Nets[id]; !plumb.UsesParent(n) {
			if err := d.fwd.EnsureNetwork(n); err != nil {
				p.Failed[id] = true
				errs = append(errs, fmt.Errorf("network %s: %w", id, err))
			}
		}
	}
	errs = append(errs, d.syncVeths(ctx, p)...)
	errs = append(errs, d.host.SyncLANEndpoints(ctx, p, func(name string) { d.repaired(datapath.RepairChild, name) })...)
	if err := ctx.Err(); err != nil {
		return errors.Join(append(errs, err)...)
	}
	remotes := make(map[string][]datapath.Remote, len(s.Remotes))
	for id, rs := range s.Remotes {
		if n, ok := p.Nets[id]; ok && n.Driver == datapath.DriverOverlay {
			rs = d.usableRemotes(n, rs)
		} else if ok && len(rs) > 0 {
			errs = append(errs, plumb.Invalidf("network %s: remotes need an overlay network, not %q", id, n.Driver))
		}
		remotes[id] = rs
	}
	s.Remotes = remotes
	if err := d.fwd.Sync(s); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// syncVeths ensures the veth pairs of a Sync's bridge and overlay
// endpoints, and their published ports (the first by endpoint ID wins a
// host port two publish).
//
// An endpoint whose host veth is intact in one dump of the host's links
// (plumb.VethIntact) and whose program is attached is not ensured again:
// a pass at 1,000 endpoints costs a dump, not 1,000 ensures.
func (d *Datapath) syncVeths(ctx context.Context, p *plumb.Plan) []error {
	var errs []error
	clear(d.ports)
	links, err := d.host.LinksByName()
	if err != nil {
		errs = append(errs, err)
	}
	for _, ep := range p.BridgeEndpoints() {
		if err := ctx.Err(); err != nil {
			return append(errs, err)
		}
		n := p.Nets[ep.NetworkID]
		if err := d.portConflict(ep); err != nil {
			errs = append(errs, err)
		} else {
			d.setPorts(ep)
		}
		if l := links[ep.HostIfName]; plumb.VethIntact(l, n, ep, 0) {
			intact, err := d.fwd.endpointIntact(ep.ID, l.Attrs().Index)
			if err != nil {
				errs = append(errs, fmt.Errorf("endpoint %s: %w", ep.ID, err))
			}
			if intact {
				continue
			}
		}
		created, err := d.ensureVeth(n, ep)
		if err != nil {
			errs = append(errs, err)
		} else if created {
			d.repaired(datapath.RepairVeth, ep.HostIfName)
		}
	}
	return errs
}

// WatchDrift signals when a link marked as fabric's is deleted from the
// host namespace (plumb.WatchLinks).
func (d *Datapath) WatchDrift(ctx context.Context) (changed <-chan struct{}, err error) {
	err = d.locked(func() error {
		changed, err = d.host.WatchLinks(ctx)
		return err
	})
	return changed, err
}
