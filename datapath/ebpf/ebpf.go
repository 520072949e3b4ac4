// Package ebpf is the eBPF datapath: bridge networks without a bridge.
// Each endpoint's veth pair and sandbox side, and macvlan/ipvlan networks,
// come from the plumbing it shares with the kernel datapath (package
// plumb); the host side of bridge and overlay endpoints is programs:
//
//   - a tc program (bpf.FromEndpoint, TCX ingress) on every host-side veth
//     answers the sandbox's ARP, enforces anti-spoofing and isolation, and
//     hands same-host traffic straight to the destination sandbox;
//   - overlay networks are the same locally; their remote endpoints are
//     reached through one flow-based VXLAN device, fabric-vx, whose
//     ingress program (bpf.Tunnel) delivers what other nodes send
//     (overlay.go);
//   - the host routes to each endpoint with a /32 route and a permanent
//     neighbour entry through its veth, and owns every gateway address on
//     one portless bridge, fabric-gw; a network's whole subnet is unreachable
//     otherwise, so nothing for it leaks out of the default route;
//   - maps and program links are pinned under the bpf root, so the
//     programs keep forwarding while the agent is down and a restarted
//     agent re-opens the same maps and swaps its programs in atomically.
//
// Everything is done in one "host" network namespace through netlink
// handles opened on it; program attachment happens on a thread switched
// into it. The package does not know the kernel datapath (nor it this one).
package ebpf

import (
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/bpf"
	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns"
)

// DefaultBPFRoot is where maps and links are pinned unless told otherwise.
const DefaultBPFRoot = "/sys/fs/bpf/fabric"

// XDP attach modes (--xdp).
const (
	XDPAuto   = "auto"
	XDPNative = "native"
	XDPOff    = "off"
)

// Options configures the eBPF datapath.
type Options struct {
	// NetNSPath is the host namespace; "" means the caller's own.
	NetNSPath string
	// BPFRoot is a directory on a bpffs for the pins; "" means
	// DefaultBPFRoot. Each agent on a machine needs its own.
	BPFRoot string
	// Uplink is the interface that leads out of the host; "" means the
	// interface of the IPv4 default route.
	Uplink string
	// XDP is XDPAuto, XDPNative or XDPOff.
	XDP string
	// Tunnel is where overlay traffic leaves and arrives (the flow-based
	// VXLAN device's port and local address).
	Tunnel datapath.Tunnel
	// GuardPorts are fabric's own ports on the host (gossip, tunnel,
	// metrics; at most bpf.GuardPorts per protocol): the endpoint program
	// drops what sandboxes send to them on any host address.
	GuardPorts []datapath.HostPort
	// ShimRoutes are host addresses off the LANs (the shared resolver's)
	// that sandboxes of macvlan and ipvlan L2 networks with a host shim
	// reach through the shim: each such sandbox gets a route to them via
	// the shim's address.
	ShimRoutes []netip.Addr
	// ConntrackMax is the connection table's size in entries (two per
	// connection); 0 means datapath.DefaultConntrackMax. Changing it
	// recreates the pinned maps at the next start (connections through NAT
	// are lost once).
	ConntrackMax int
	// ConntrackPending is how many unanswered connections one source may
	// start per 5 s; 0 means datapath.DefaultConntrackPending, negative no
	// limit.
	ConntrackPending int
	// SockRedirect turns on socket redirection (sockredir.go) for TCP
	// connections from host processes to local sandboxes. Off by default:
	// the kernel gives redirected bytes no flow control, and splice(2)
	// does not see them.
	SockRedirect bool

	// EndpointSpec, if set, is a build of the endpoint object loaded in
	// place of the built-in one (bpf.EndpointSpec): tests upgrade to a
	// program that differs, or load one the verifier rejects, with it.
	EndpointSpec *ebpf.CollectionSpec
}

// Forwarder is the programs of package bpf and what they need on the
// host (the gateway device, routes, the tunnel device, pins): the host side
// of the eBPF datapath's bridge and overlay endpoints. Datapath calls it
// under its lock; Status and Metrics may run concurrently.
type Forwarder struct {
	log    *slog.Logger
	opts   Options
	nsPath string
	nl     *netlink.Handle
	tc     *tcSock // the shared-block messages netlink lacks
	// epBlock is the endpoints' ingress tc block (egress: the next one),
	// once chosen (endpointBlock).
	epBlock uint32
	objs    *bpf.Objects
	sock    *bpf.Sock      // nil if the socket hooks could not be attached
	redir   *bpf.SockRedir // nil if socket redirection could not be attached
	up      *bpf.Uplink
	tun     *bpf.Tunnel
	xdp     string // what --xdp resulted in, for status
	cgroup  string // where the socket hooks are attached
	// redirCgroup is where the sockops program is attached; redirErr why
	// socket redirection is off.
	redirCgroup string
	redirErr    error
	redirMemMax uint64 // pages: see setRedirMemMax
	uplink      uplinkInfo
	hasUp       bool   // an uplink was found
	tcMode      string // modeTCX or modeClsact, once the first tc program is attached

	mu      sync.Mutex // guards the fields below (Status and Metrics run concurrently)
	nets    map[string]netState
	hostCfg bpf.HostConfig // as last written to the host_config map
	// underlayName and underlayMTU are the tunnel address's interface,
	// as of the last ensureTunnel (Status checks overlay MTUs against it).
	underlayName string
	underlayMTU  int
	eps          map[string]epState // by endpoint ID
	warnings     []string
	restored     int    // pinned maps re-opened at start
	ctEvictions  uint64 // highest conntrack eviction estimate reported
	// written are the remotes map entries as this process last wrote
	// them: one missing or changed later is drift a Sync repairs.
	written map[remoteKey]bpf.Remote
	repairs datapath.Repairs
	progIDs map[*ebpf.Program]ebpf.ProgramID // see progID
}

type netState struct {
	id  bpf.NetID
	net datapath.Network
}

type epState struct {
	ifindex  int
	ports    []bpf.Port
	attached bool // its program was attached by this process
}

// NewForwarder loads the programs (re-opening pinned maps), and prepares
// the host namespace. An error wrapping ErrUnsupported means this host
// cannot run the eBPF datapath at all; one wrapping ErrRejected, that the
// verifier refused a program of ours (it carries the log's tail).
func NewForwarder(log *slog.Logger, opts Options) (_ *Forwarder, err error) {
	if opts.BPFRoot == "" {
		opts.BPFRoot = DefaultBPFRoot
	}
	if opts.XDP == "" {
		opts.XDP = XDPAuto
	}
	switch opts.XDP {
	case XDPAuto, XDPNative, XDPOff:
	default:
		return nil, fmt.Errorf("xdp mode %q is not one of auto, native, off: %w", opts.XDP, datapath.ErrInvalid)
	}
	f := &Forwarder{
		log:  log.With("datapath", "ebpf"),
		opts: opts,
		nets: map[string]netState{},
		eps:  map[string]epState{},

		written: map[remoteKey]bpf.Remote{},
	}
	f.nsPath = opts.NetNSPath
	if f.nsPath == "" {
		f.nsPath = "/proc/self/ns/net"
	}
	f.nl, err = netns.HandleAt(f.nsPath)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in host netns: %w", err)
	}
	if f.tc, err = openTCSock(f.nsPath); err != nil {
		f.nl.Close()
		return nil, err
	}
	defer func() {
		if err != nil {
			f.nl.Close()
			f.tc.Close()
		}
	}()
	// Settings first: a wrong one is refused before anything is made.
	if f.uplink, f.hasUp, err = f.findUplink(); err != nil {
		return nil, err
	}
	if err := f.checkXDP(); err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, unsupported("lift memlock limit", err)
	}
	if err := ensureBPFFS(opts.BPFRoot); err != nil {
		return nil, err
	}
	pol, err := policyOf(opts)
	if err != nil {
		return nil, err
	}
	if f.objs, f.restored, err = loadEndpoint(f.log, opts); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			f.objs.Close()
		}
	}()
	if err := f.objs.SetPolicy(pol); err != nil {
		return nil, err
	}
	if err := f.prepareHost(); err != nil {
		return nil, err
	}
	if f.tun, err = bpf.LoadTunnel(f.objs, nil); err != nil {
		return nil, classifyLoad("tunnel program", err)
	}
	defer func() {
		if err != nil {
			f.tun.Close()
		}
	}()
	f.adoptTunnel()
	if err := f.attachHostPrograms(); err != nil {
		return nil, err
	}
	return f, nil
}

// attachHostPrograms attaches the uplink's programs and the socket hooks
// (without which only published ports from the host itself are lost).
func (f *Forwarder) attachHostPrograms() error {
	if !f.hasUp {
		f.warnings = append(f.warnings, "no uplink (no --uplink and no default route): no masquerade, published ports only from this host")
	}
	if err := f.setHostConfig(f.uplink); err != nil {
		return err
	}
	if err := f.attachUplink(); err != nil {
		return classifyLoad("uplink programs", err)
	}
	if err := f.attachSockHooks(); err != nil {
		f.log.Warn("socket hooks unavailable: published ports are not reachable from this host's own sockets", "err", err)
		f.warnings = append(f.warnings, "socket hooks unavailable (published ports not reachable from the host itself): "+err.Error())
	}
	// Only faster: without it the same connections take the veth path.
	if !f.opts.SockRedirect {
		if err := f.retireSockRedir(); err != nil {
			f.log.Warn("cannot turn socket redirection off", "err", err)
		}
		return nil
	}
	if err := f.attachSockRedir(); err != nil {
		f.redirErr = err
		f.log.Warn("socket redirection unavailable: host connections to sandboxes take the veth path", "err", err)
		if !errors.Is(err, ErrUnsupported) {
			f.warnings = append(f.warnings, "socket redirection unavailable: "+err.Error())
		}
	}
	return nil
}

// loadEndpoint loads the endpoint object (opts.EndpointSpec, or the
// built-in one) sized by opts, onto the maps pinned under the bpf root.
func loadEndpoint(log *slog.Logger, opts Options) (*bpf.Objects, int, error) {
	spec := opts.EndpointSpec
	if spec == nil {
		var err error
		if spec, err = bpf.EndpointSpec(); err != nil {
			return nil, 0, unsupported("endpoint programs", err)
		}
	}
	if err := bpf.SetConntrackMax(spec, opts.ConntrackMax); err != nil {
		return nil, 0, fmt.Errorf("conntrack size: %w (%w)", err, datapath.ErrInvalid)
	}
	return loadPinned(log, opts.BPFRoot, spec)
}

// policyOf is what the programs enforce for these options.
func policyOf(opts Options) (bpf.Policy, error) {
	var p bpf.Policy
	for _, g := range opts.GuardPorts {
		switch {
		case g.Port == 0:
			return p, fmt.Errorf("guarded host port %s/0: %w", g.Proto, datapath.ErrInvalid)
		case g.Proto == "tcp":
			p.GuardTCP = append(p.GuardTCP, g.Port)
		case g.Proto == "udp":
			p.GuardUDP = append(p.GuardUDP, g.Port)
		default:
			return p, fmt.Errorf("guarded host port %s/%d: need tcp or udp: %w", g.Proto, g.Port, datapath.ErrInvalid)
		}
	}
	if len(p.GuardTCP) > bpf.GuardPorts || len(p.GuardUDP) > bpf.GuardPorts {
		return p, fmt.Errorf("%d TCP and %d UDP guarded host ports: at most %d each: %w", len(p.GuardTCP), len(p.GuardUDP), bpf.GuardPorts, datapath.ErrInvalid)
	}
	if opts.Tunnel.Local.IsValid() {
		p.TunnelPort = opts.Tunnel.Port
		if p.TunnelPort == 0 {
			p.TunnelPort = datapath.DefaultTunnelPort
		}
	}
	switch n := opts.ConntrackPending; {
	case n == 0:
		p.CTPendingMax = datapath.DefaultConntrackPending
	case n > 0:
		p.CTPendingMax = uint32(n)
	}
	return p, nil
}

// policyDetail describes the policy for Status.
func policyDetail(p bpf.Policy) string {
	var ports []string
	for _, port := range p.GuardTCP {
		ports = append(ports, fmt.Sprintf("tcp/%d", port))
	}
	for _, port := range p.GuardUDP {
		if port != p.TunnelPort { // said once below: closed on every host
			ports = append(ports, fmt.Sprintf("udp/%d", port))
		}
	}
	if p.TunnelPort != 0 {
		ports = append(ports, fmt.Sprintf("udp/%d (on every host)", p.TunnelPort))
	}
	guard := "none"
	if len(ports) > 0 {
		guard = strings.Join(ports, " ")
	}
	quota := "no quota of unanswered connections"
	if p.CTPendingMax > 0 {
		quota = fmt.Sprintf("at most %d unanswered connections per source per 5 s", p.CTPendingMax)
	}
	return "host ports closed to sandboxes: " + guard + "; " + quota
}

// Close releases handles; programs, links and maps stay (pinned).
func (f *Forwarder) Close() error {
	// The objects loaded onto the shared maps first, the maps' owner last.
	err := errors.Join(closeOnce(&f.redir), closeOnce(&f.sock), closeOnce(&f.up), closeOnce(&f.tun), closeOnce(&f.objs))
	if f.nl != nil {
		f.nl.Close()
		f.nl = nil
	}
	f.tc.Close()
	return err
}

// closeOnce closes what *c holds, if anything, and forgets it.
func closeOnce[T interface {
	comparable
	Close() error
}](c *T) error {
	var none T
	if *c == none {
		return nil
	}
	err := (*c).Close()
	*c = none
	return err
}

// Status reports the mode, attach points and program count.
func (f *Forwarder) Status() datapath.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := datapath.Status{
		Name: "ebpf",
		Details: []string{
			fmt.Sprintf("tc (clsact ingress) on %s, no bridge: one filter on shared tc block %d", count(len(f.eps), "endpoint veth", "endpoint veths"), f.epBlock),
			fmt.Sprintf("%d networks; maps pinned under %s", len(f.nets), f.opts.BPFRoot),
		},
	}
	if f.tcMode == modeClsact {
		st.Details = append(st.Details, "tc programs attach as clsact filters: no TCX in this kernel (Linux < 6.6); a restart replaces them in place")
	}
	if f.cgroup != "" {
		st.Details = append(st.Details, "socket hooks (connect4, sendmsg4, recvmsg4, getpeername4) on cgroup "+f.cgroup)
	}
	st.Details = append(st.Details, f.redirDetail())
	if f.hasUp {
		st.Details = append(st.Details, fmt.Sprintf("uplink %s (%s): tc (%s ingress+egress) masquerade and published-port NAT", f.uplink.name, f.uplink.addr, f.tcModeLabel()))
	}
	st.Details = append(st.Details, "XDP: "+f.xdp)
	f.overlayStatus(&st)
	if n, c, err := f.objs.ConntrackStats(); err == nil {
		st.Details = append(st.Details, fmt.Sprintf("conntrack: %d of %d entries", n, c))
	}
	if p, err := f.objs.Policy(); err == nil {
		st.Details = append(st.Details, policyDetail(p))
	}
	st.Warnings = append(st.Warnings, f.warnings...)
	return st
}

// pinLink makes the link pinned at pin run prog. A link pinned there by an
// earlier run gets prog swapped in atomically (link.Update): no packet
// misses a program. A pin that cannot be updated, or that valid rejects
// (its device is gone), is replaced by a new link from attach. valid may
// be nil.
func (f *Forwarder) pinLink(pin string, prog *ebpf.Program, valid func(link.Link) bool, attach func() (link.Link, error)) error {
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		ok := valid == nil || valid(l)
		if ok {
			err = l.Update(prog)
		}
		l.Close()
		if ok && err == nil {
			return nil
		}
		if ok {
			f.log.Warn("cannot update pinned link; replacing it", "pin", pin, "err", err)
		}
		if err := detach(pin); err != nil {
			return err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		f.log.Warn("cannot open pinned link; replacing it", "pin", pin, "err", err)
		_ = os.Remove(pin)
	}
	l, err := attach()
	if err != nil {
		return err
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		_ = l.Detach()
		return fmt.Errorf("pin link %s: %w", pin, err)
	}
	return nil
}

// attachTCX attaches prog to ifindex (in the host namespace) through a link
// pinned at pin, or swaps prog into the link already pinned there.
func (f *Forwarder) attachTCX(pin string, ifindex int, prog *ebpf.Program, at ebpf.AttachType) error {
	sameDevice := func(l link.Link) bool {
		info, err := l.Info()
		return err == nil && info.TCX() != nil && int(info.TCX().Ifindex) == ifindex
	}
	return f.pinLink(pin, prog, sameDevice, func() (l link.Link, err error) {
		err = netns.Do(f.nsPath, func() error {
			l, err = link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: at})
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("attach tc program to ifindex %d: %w", ifindex, err)
		}
		return l, nil
	})
}

// detach removes a pinned link (and so the attachment, once no fd holds it).
func detach(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		// Not a link we can open: the pin alone is what we own.
		if rmErr := os.Remove(pin); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
			return fmt.Errorf("remove pin %s: %w", pin, rmErr)
		}
		return nil
	}
	defer l.Close()
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpin %s: %w", pin, err)
	}
	// Detach now rather than when the last fd closes; a link whose device
	// is gone is already detached.
	if err := l.Detach(); err != nil && !errors.Is(err, unix.ENOLINK) && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("detach %s: %w", pin, err)
	}
	return nil
}

func (f *Forwarder) linkPin(name string) string { return filepath.Join(f.opts.BPFRoot, "links", name) }

func endpointPin(ifindex int) string { return fmt.Sprintf("ep-%d", ifindex) }

// routerMAC is the MAC a network's sandboxes see for their gateway and
// every on-link neighbour: stable per network, locally administered.
func routerMAC(networkID string) net.HardwareAddr {
	h := fnv32(networkID)
	return net.HardwareAddr{0x02, 0xfb, byte(h >> 24), byte(h >> 16), byte(h >> 8), byte(h)}
}

// netID maps a network ID to the programs' 32-bit id (never 0).
func netID(networkID string) bpf.NetID {
	if h := fnv32(networkID); h != 0 {
		return bpf.NetID(h)
	}
	return 1
}

func fnv32(s string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(s))
	return h.Sum32()
}
