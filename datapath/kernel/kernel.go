// Package kernel is the kernel datapath: Docker's single-host bridge model
// built from plain kernel parts. Each network is a Linux bridge, each
// endpoint a veth pair whose peer lives in the sandbox, and one nftables
// table ("ip fabric", owned entirely by this package) holds masquerade,
// isolation between networks, internal networks and published ports. A
// second one, "bridge fabric", holds each bridge endpoint to its own MAC
// and IPv4 address (anti-spoofing, spoof.go).
//
// macvlan and ipvlan networks put sandboxes straight onto a host
// interface's LAN instead: each endpoint is a child of the network's parent
// interface, born in the sandbox; the host keeps at most an 802.1q
// sub-interface fabric made as the parent and a "host shim" through which
// the host reaches its own sandboxes. They need no bridge and no nftables
// rules (parent.go, vlan.go, shim.go, macvlan.go).
//
// Overlay networks are bridge networks whose bridge also holds a fixed-VNI
// VXLAN device; remote endpoints are static FDB and neighbour entries on
// it, answered by the device's proxy ARP (overlay.go).
//
// It programs one "host" network namespace through netlink and nftables
// handles opened on that namespace, so the calling process need not live in
// it. Every link it creates on the host carries an alias starting with
// datapath.OwnerPrefix (OwnerPrefix+ID, or OwnerPrefix+"vlan:"/"shim:"/
// "vxlan:"+network ID), which is how Sync finds what to prune without touching
// anything else. macvlan/ipvlan children live only in their sandboxes, known
// by sandbox and interface name.
//
// The package knows only the plain descriptions in package datapath: nothing
// of the agent's store, of the API, of IPAM or of gossip.
package kernel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// Options configures a kernel datapath.
type Options struct {
	// NetNSPath is the network namespace the datapath programs as "the
	// host"; "" means the namespace New is called in (the process's own).
	NetNSPath string
	// Tunnel is where overlay networks' VXLAN traffic leaves and arrives;
	// overlay networks cannot be ensured without Tunnel.Local.
	Tunnel datapath.Tunnel
	// GuardPorts are fabric's own ports on the host (gossip, tunnel,
	// metrics): the input chain drops what sandboxes send to them.
	GuardPorts []datapath.HostPort
	// ShimRoutes are host addresses off the LANs (the shared resolver's)
	// that sandboxes of macvlan and ipvlan L2 networks with a host shim
	// reach through the shim: each such sandbox gets a route to them via
	// the shim's address.
	ShimRoutes []netip.Addr

	// faults, set only by this package's tests, makes a step fail right
	// after a link was created, to show it is rolled back.
	faults plumb.Faults
}

// Datapath programs bridges, veths and nftables in one host namespace.
// Its methods are safe for concurrent use; they run one at a time.
type Datapath struct {
	log    *slog.Logger
	host   *plumb.Host     // veths, sandbox sides, macvlan/ipvlan networks
	nsPath string          // host.NSPath()
	nl     *netlink.Handle // host.NL(); nil once closed
	nft    *nftables.Conn
	tunnel datapath.Tunnel
	guard  []datapath.HostPort

	mu    sync.Mutex
	state desired
	// dirty is set while the table may differ from state because the last
	// rebuild failed; the next call rebuilds even if state did not change.
	dirty bool
	// tableLive says the last rebuild made the table (with its port
	// maps), so published-port changes can be element updates.
	tableLive bool
	// nftBatches counts the nftables transactions sent (for tests).
	nftBatches int

	// overlays are the overlay networks ensured (or synced) and not
	// deleted since start, with the remotes last set (bridge model only).
	overlays map[string]*overlayNet

	// skips logs and counts the remotes SetRemotes leaves out.
	skips datapath.SkipLog

	// pass counts what a Sync found missing and put back, and keeps the
	// last one's error for Status.
	pass datapath.Pass
	// tableSynced is set once a Sync wrote the nftables table: later ones
	// only compare it with state. vethsSynced is set once a Sync ensured
	// every veth in full: later ones compare host veths with one dump.
	tableSynced, vethsSynced bool

	// spoof are the elements of the anti-spoofing table ("bridge fabric",
	// spoof.go) by host veth; spoofReady says the table is believed to
	// hold them, spoofSynced that a Sync has checked it once.
	spoof                   map[string]spoofElem
	spoofReady, spoofSynced bool
	// spoofRetired are elements of endpoints deleted with their namespace
	// (by port), the first at spoofRetiredAt, still in spoof and the
	// table until spoofFlush removes them in one batch, when spoofTimer
	// fires or a Sync or Close comes first (spoofretire.go).
	spoofRetired   map[string]spoofElem
	spoofRetiredAt time.Time
	spoofTimer     *time.Timer

	// portIdx indexes state.ports by protocol and host port (nil: not
	// built since state.ports was replaced; portindex.go).
	portIdx portIndex
}

// errClosed is returned by every method after Close.
var errClosed = errors.New("kernel datapath is closed")

var _ datapath.Datapath = (*Datapath)(nil)

// desired is what the nftables table is generated from: every network the
// datapath has been asked to ensure and every endpoint that publishes ports.
// Endpoints without ports are not tracked, so setting them up never costs
// an nftables rebuild.
type desired struct {
	networks map[string]netState
	ports    map[string]endpointPorts // by endpoint ID
	// guard are the host ports no sandbox may reach (Options.GuardPorts).
	guard []datapath.HostPort
	// tunnelPort and peers make the input chain accept VXLAN only from
	// the node that owns the inner source: peers has an entry (maybe
	// empty) per overlay network whose remotes were set, and an adopted
	// table what its set held, per VNI (restoredPeers) until replaced.
	tunnelPort uint16
	peers      map[string][]tunnelPeer
}

// tunnelPeer is one (outer source, VNI, inner source) VXLAN may carry.
type tunnelPeer struct {
	node netip.Addr
	vni  uint32
	addr netip.Addr
}

// netState is the part of a network the nftables rules depend on.
type netState struct {
	ID       string
	Bridge   string
	Subnet   netip.Prefix
	Internal bool
}

// endpointPorts is the part of an endpoint the nftables rules depend on.
type endpointPorts struct {
	NetworkID string
	Addr      netip.Addr
	Ports     []datapath.PortMapping
}

func newDesired() desired {
	return desired{networks: map[string]netState{}, ports: map[string]endpointPorts{}, peers: map[string][]tunnelPeer{}}
}

// New opens handles on the host namespace and adopts the nftables table a
// previous run left there, so a restarted agent keeps serving published
// ports while it re-ensures its objects.
func New(log *slog.Logger, opts Options) (_ *Datapath, err error) {
	if log == nil {
		log = slog.Default()
	}
	if err := checkGuardPorts(opts.GuardPorts); err != nil {
		return nil, err
	}
	log = log.With("datapath", "kernel")
	host, err := plumb.Open(log, opts.NetNSPath, opts.faults)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			host.Close()
		}
	}()
	host.SetGuardPorts(opts.GuardPorts) // for the host shims (plumb/shimguard.go)
	host.SetShimRoutes(opts.ShimRoutes)
	nft, err := nftables.New(nftables.WithNetNSFd(int(host.NS())), nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("nftables connection in host netns: %w", err)
	}
	d := &Datapath{
		log:    log,
		host:   host,
		nsPath: host.NSPath(),
		nl:     host.NL(),
		nft:    nft,
		tunnel: opts.Tunnel,
		guard:  slices.Clone(opts.GuardPorts),
		state:  newDesired(),

		overlays: map[string]*overlayNet{},
		spoof:    map[string]spoofElem{},
	}
	if err := d.spoofRestore(); err != nil {
		d.log.Warn("cannot adopt the anti-spoofing table; rebuilding it", "err", err)
	}
	restored, err := d.restoreState()
	if err != nil {
		// A table we cannot read is rebuilt by the next ensure; not fatal.
		d.log.Warn("cannot adopt existing nftables table", "err", err)
		d.dirty = true
	} else {
		d.state = restored
		d.portIdx = nil
		if err := d.restorePeers(&d.state); err != nil {
			d.log.Warn("cannot adopt the tunnel peers set", "err", err)
		}
	}
	return d, nil
}

// Close releases the handles. Networks and endpoints stay as they are: a
// restarted agent finds them again.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs error
	if d.nl != nil {
		errs = d.spoofFlush()
	}
	if d.nft != nil {
		errs = errors.Join(errs, d.nft.CloseLasting())
		d.nft = nil
	}
	if d.nl != nil {
		errs = errors.Join(errs, d.host.Close())
		d.nl = nil
	}
	return errs
}

// Status reports the datapath's kind and size.
func (d *Datapath) Status(ctx context.Context) datapath.Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := datapath.Status{
		Name: "kernel",
		Details: []string{
			"bridge+nftables",
			fmt.Sprintf("%d bridges, %d port rules", len(d.state.networks), d.state.portRuleCount()),
		},
	}
	if d.nl != nil && d.host.LANNetworks() > 0 {
		st.Details = append(st.Details, fmt.Sprintf("%d macvlan/ipvlan networks", d.host.LANNetworks()))
		st.Warnings = append(st.Warnings, d.host.LANWarnings()...)
	}
	st.Details = append(st.Details, d.overlayDetails()...)
	st.Details = append(st.Details, d.guardDetails()...)
	if d.pass.LastErr != nil {
		st.Warnings = append(st.Warnings, "last sync: "+d.pass.LastErr.Error())
	}
	return st
}

func (s desired) portRuleCount() int {
	n := 0
	for _, ep := range s.ports {
		n += len(ep.Ports)
	}
	return n
}

// EnsureNetwork creates or repairs the network's bridge and host settings,
// and regenerates the nftables table when the network is new or changed.
// A bridge made here is removed again if its rules cannot be installed.
//
// For a macvlan/ipvlan network it checks the parent (an error wrapping
// datapath.ErrParentMissing if it is absent or down), creates a missing
// IFACE.VID parent, and makes or removes the host shim.
//
// An overlay network is a bridge network plus its VXLAN device on the
// bridge (overlay.go); without Options.Tunnel.Local it is refused with
// datapath.ErrInvalid before anything is made.
func (d *Datapath) EnsureNetwork(ctx context.Context, n datapath.Network) error {
	if err := plumb.ValidateNetwork(n); err != nil {
		return err
	}
	return d.dispatch(n, func() error { return d.host.EnsureLANNetwork(n) }, func() error { return d.ensureBridgeNetwork(n) })
}

// dispatch runs, under d.mu on a datapath not closed, lan for a network on
// a parent (macvlan/ipvlan) and bridge for any other.
func (d *Datapath) dispatch(n datapath.Network, lan, bridge func() error) error {
	if plumb.UsesParent(n) {
		return d.locked(lan)
	}
	return d.locked(bridge)
}

// locked runs f under d.mu, or returns errClosed after Close.
func (d *Datapath) locked(f func() error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.nl == nil {
		return errClosed
	}
	return f()
}

// ensureBridgeNetwork is EnsureNetwork for a bridge (or overlay) network,
// under d.mu.
func (d *Datapath) ensureBridgeNetwork(n datapath.Network) error {
	if isOverlay(n) {
		if err := d.checkTunnel(n); err != nil {
			return err
		}
	}
	created, err := d.ensureBridge(n)
	if err != nil {
		return err
	}
	vxCreated, err := d.ensureNetworkVXLAN(n)
	if err != nil {
		if created {
			_ = d.deleteBridge(n)
		}
		return err
	}
	old, had := d.state.networks[n.ID]
	if had && old == netStateOf(n) && !d.dirty {
		return d.ensureTableIntact()
	}
	d.state.networks[n.ID] = netStateOf(n)
	if err := d.applyRuleset(); err != nil {
		if had {
			d.state.networks[n.ID] = old
		} else {
			delete(d.state.networks, n.ID)
		}
		if vxCreated {
			_ = d.deleteVXLAN(n)
		}
		if created {
			_ = d.deleteBridge(n)
		}
		return err
	}
	return nil
}

// ensureNetworkVXLAN gives an overlay network its VXLAN device on the
// network's (ensured) bridge, and takes it away from a network that is no
// longer an overlay.
func (d *Datapath) ensureNetworkVXLAN(n datapath.Network) (created bool, err error) {
	if !isOverlay(n) {
		if o, ok := d.overlays[n.ID]; ok {
			if err := d.deleteVXLAN(datapath.Network{ID: n.ID, VNI: o.vni}); err != nil {
				return false, err
			}
			delete(d.overlays, n.ID)
		}
		return false, nil
	}
	br, err := d.nl.LinkByName(n.Bridge)
	if err != nil {
		return false, fmt.Errorf("network %s: look up bridge %s: %w", n.ID, n.Bridge, err)
	}
	return d.ensureOverlay(n, br)
}

// DeleteNetwork removes the bridge and the network's rules, including the
// published ports of endpoints still on it. For a macvlan/ipvlan network it
// removes the host shim, and the VLAN parent only if fabric made it for
// this network. An overlay network's VXLAN device goes before its bridge.
func (d *Datapath) DeleteNetwork(ctx context.Context, n datapath.Network) error {
	if n.ID == "" {
		return plumb.Invalidf("network without ID")
	}
	return d.dispatch(n, func() error { return d.host.DeleteLANNetwork(n) }, func() error { return d.deleteBridgeNetwork(n) })
}

// deleteBridgeNetwork is DeleteNetwork for a bridge (or overlay) network,
// under d.mu.
func (d *Datapath) deleteBridgeNetwork(n datapath.Network) error {
	if isOverlay(n) {
		if err := d.deleteVXLAN(n); err != nil {
			return err
		}
		delete(d.overlays, n.ID)
		d.skips.Forget(n.ID)
	}
	if err := d.deleteBridge(n); err != nil {
		return err
	}
	changed := false
	if _, ok := d.state.peers[n.ID]; ok {
		delete(d.state.peers, n.ID)
		changed = true
	}
	if _, ok := d.state.networks[n.ID]; ok {
		delete(d.state.networks, n.ID)
		changed = true
	}
	for id, ep := range d.state.ports {
		if ep.NetworkID == n.ID {
			d.unsetPorts(id)
			changed = true
		}
	}
	if !changed && !d.dirty {
		return nil
	}
	return d.rules()
}

// rules regenerates the nftables table.
func (d *Datapath) rules() error { return d.applyRuleset() }

// EnsureEndpoint creates or repairs the endpoint's veth pair and sandbox
// side. nftables is touched only when the endpoint's published ports
// change; a veth made here is removed again if they cannot be installed.
// On a macvlan/ipvlan network the endpoint is a child of the parent
// instead, plus a host route through the shim if the network has one.
func (d *Datapath) EnsureEndpoint(ctx context.Context, n datapath.Network, ep datapath.Endpoint) error {
	if err := plumb.ValidateNetwork(n); err != nil {
		return err
	}
	if err := plumb.ValidateEndpoint(n, ep); err != nil {
		return err
	}
	lan := func() error {
		_, err := d.host.EnsureChild(n, ep)
		return err
	}
	return d.dispatch(n, lan, func() error { return d.ensureVethEndpoint(n, ep) })
}

// ensureVethEndpoint is EnsureEndpoint for an endpoint on a bridge network,
// under d.mu.
func (d *Datapath) ensureVethEndpoint(n datapath.Network, ep datapath.Endpoint) error {
	if err := d.portClash(ep); err != nil {
		return err
	}
	var prev *spoofElem
	if e, ok := d.spoof[ep.HostIfName]; ok {
		prev = &e
	}
	undoSpoof, err := d.spoofEnsureEarly(ep)
	if err != nil {
		return err
	}
	created, br, err := d.ensureVeth(n, ep)
	if err != nil {
		undoSpoof()
		return err
	}
	err = d.spoofEnsure(ep)
	if err == nil {
		err = d.ensureHostNeighbour(br, ep, prev)
	}
	if err != nil {
		if created {
			_ = d.host.DeleteVeth(ep)
			undoSpoof()
		}
		return err
	}
	old, had := d.state.ports[ep.ID]
	if !d.setPorts(n, ep) && !d.dirty {
		return nil
	}
	if err := d.portsChanged(ep.ID, old, had); err != nil {
		if had {
			d.putPorts(ep.ID, old)
		} else {
			d.unsetPorts(ep.ID)
		}
		if created {
			_ = d.host.DeleteVeth(ep)
			undoSpoof()
		}
		return err
	}
	return nil
}

// setPorts records ep's published ports and reports whether the desired
// rules changed.
func (d *Datapath) setPorts(n datapath.Network, ep datapath.Endpoint) bool {
	old, had := d.state.ports[ep.ID]
	if len(ep.Ports) == 0 {
		d.unsetPorts(ep.ID)
		return had
	}
	want := endpointPorts{NetworkID: n.ID, Addr: ep.Addr.Addr(), Ports: append([]datapath.PortMapping(nil), ep.Ports...)}
	if had && old.equal(want) {
		return false
	}
	d.putPorts(ep.ID, want)
	return true
}

func (a endpointPorts) equal(b endpointPorts) bool {
	if a.NetworkID != b.NetworkID || a.Addr != b.Addr || len(a.Ports) != len(b.Ports) {
		return false
	}
	for i := range a.Ports {
		if a.Ports[i] != b.Ports[i] {
			return false
		}
	}
	return true
}

// DeleteEndpoint removes the host veth (the peer goes with it) and the
// endpoint's published ports, or a macvlan/ipvlan child and its shim route.
func (d *Datapath) DeleteEndpoint(ctx context.Context, n datapath.Network, ep datapath.Endpoint) error {
	if ep.ID == "" {
		return plumb.Invalidf("endpoint without ID")
	}
	return d.dispatch(n, func() error { return d.host.DeleteChild(n, ep) }, func() error { return d.deleteVethEndpoint(n, ep) })
}

// deleteVethEndpoint is DeleteEndpoint for an endpoint on a bridge network,
// under d.mu.
func (d *Datapath) deleteVethEndpoint(n datapath.Network, ep datapath.Endpoint) error {
	if err := d.host.DeleteVeth(ep); err != nil {
		return err
	}
	if err := d.deleteHostNeighbour(n, ep); err != nil {
		return err
	}
	if ep.NamespaceGoes {
		d.spoofRetire(ep) // its port is down already
	} else if err := d.spoofDelete(ep); err != nil {
		return err
	}
	old, had := d.state.ports[ep.ID]
	if !had && !d.dirty {
		return nil
	}
	d.unsetPorts(ep.ID)
	return d.portsChanged(ep.ID, old, had)
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
