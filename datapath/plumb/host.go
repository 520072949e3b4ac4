// Package plumb is the host plumbing both datapaths share: veth pairs and
// the sandbox side of an endpoint, macvlan/ipvlan networks (parents,
// 802.1q sub-interfaces, host shims, children), links marked as fabric's
// and their pruning, sysctls, validation of the plain descriptions, and
// netlink dumps retried when the kernel interrupts them.
//
// It knows nothing of bridges or eBPF programs, and of nftables only the
// host shims' own guard table (shimguard.go): what happens on a veth's
// host side is the datapath's (VethSides). Neither datapath
// package imports the other; both import this one.
package plumb

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
	fabricns "github.com/fabricnet/fabric/datapath/netns"
)

// Faults are failures injected right after a step whose work must then be
// rolled back; only tests set them (through their datapath's options).
type Faults struct {
	VethCreated  func() error // after a veth pair is created
	ChildCreated func() error // after a macvlan/ipvlan child is created
	// RenamedChild makes children the way older kernels need (born under
	// a temporary name, renamed in the sandbox) on any kernel.
	RenamedChild bool
}

func (f Faults) after(step func() error) error {
	if step == nil {
		return nil
	}
	return step()
}

// Host is the plumbing of one host namespace. Its methods are not safe
// for concurrent use: the datapath that owns it calls them under its lock.
type Host struct {
	log    *slog.Logger
	nsPath string         // of the host namespace; /proc/self/fd/N of hostNS for ""
	hostNS netns.NsHandle // kept open: handles dial into it by fd
	nl     *netlink.Handle
	faults Faults
	// parentNets are the macvlan/ipvlan networks ensured (or synced) and
	// not deleted since start, whose parents LANWarnings checks.
	parentNets map[string]datapath.Network
	// guard are the host ports the shim guard closes (shimguard.go);
	// guardGone is set once its table is known not to exist, so syncs
	// and scrapes without shims cost no nftables request.
	guard     []datapath.HostPort
	guardGone bool
	// shimRoutes are the host addresses sandboxes reach through their
	// network's host shim (shimroutes.go).
	shimRoutes []netip.Addr
	// own are the links being deleted by this Host itself (DeleteVeth),
	// whose deletion events are no drift.
	own ownDeletes
	// sysNet is /proc/sys/net of the host namespace, opened there (-1 if
	// it could not be): host sysctls are looked up relative to it.
	sysNet int
	// sysConf are the host's net/ipv4/conf and net/ipv6/conf, opened
	// once (by prefix of the sysctl name; absent if they could not be):
	// the lookup of ipv4 or ipv6 under net passes that entry of every
	// namespace that set a sysctl, one per sandbox (about 0.4 ms at 1,000
	// sandboxes), and per-link sysctls are set on every endpoint create.
	sysConf map[string]int
}

// confDirs are the sysctl directories opened once per host.
var confDirs = []string{"net/ipv4/conf/", "net/ipv6/conf/"}

// openSysctlAt opens a sysctl file; tests replace it to see the lookups.
var openSysctlAt = unix.Openat

// Open opens handles on the namespace at nsPath ("" means the caller's
// own, pinned now) as "the host".
func Open(log *slog.Logger, nsPath string, faults Faults) (_ *Host, err error) {
	hostNS, err := openNS(nsPath)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			hostNS.Close()
		}
	}()
	nl, err := netlink.NewHandleAt(hostNS, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in host netns: %w", err)
	}
	if nsPath == "" {
		// Pin "the current namespace" to the one captured now, for the
		// sysctl writes too.
		nsPath = fmt.Sprintf("/proc/self/fd/%d", int(hostNS))
	}
	sysNet := -1
	sysConf := map[string]int{}
	_ = fabricns.Do(nsPath, func() error {
		var err error
		sysNet, err = unix.Open("/proc/sys/net", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			sysNet = -1 // EnsureHostSysctl takes the whole path then
		}
		for _, dir := range confDirs {
			if fd, err := unix.Open("/proc/sys/"+dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
				sysConf[dir] = fd
			}
		}
		return nil
	})
	return &Host{log: log, nsPath: nsPath, hostNS: hostNS, nl: nl, faults: faults, parentNets: map[string]datapath.Network{}, sysNet: sysNet, sysConf: sysConf}, nil
}

// EnsureHostSysctl is EnsureSysctl in the host namespace. A name under
// net/ is looked up from the host's /proc/sys/net, opened once: a lookup
// from /proc/sys passes the "net" entry of every sandbox's namespace that
// set a sysctl (tens of microseconds at 300 sandboxes, a few with the
// descriptor).
func (h *Host) EnsureHostSysctl(name, value string) error {
	return fabricns.Do(h.nsPath, func() error {
		for dir, fd := range h.sysConf {
			if rest, ok := strings.CutPrefix(name, dir); ok {
				return ensureSysctlAt(fd, rest, name, value)
			}
		}
		if rest, ok := strings.CutPrefix(name, "net/"); ok && h.sysNet >= 0 {
			return ensureSysctlAt(h.sysNet, rest, name, value)
		}
		return EnsureSysctl(name, value)
	})
}

func openNS(path string) (netns.NsHandle, error) {
	if path != "" {
		ns, err := netns.GetFromPath(path)
		if err != nil {
			return netns.None(), fmt.Errorf("open netns %s: %w", path, err)
		}
		return ns, nil
	}
	// Only a locked thread is guaranteed to be in the process's namespace
	// for the duration of the call.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ns, err := netns.Get()
	if err != nil {
		return netns.None(), fmt.Errorf("open current netns: %w", err)
	}
	return ns, nil
}

// Close releases the handles.
func (h *Host) Close() error {
	if h.sysNet >= 0 {
		unix.Close(h.sysNet)
		h.sysNet = -1
	}
	for dir, fd := range h.sysConf {
		unix.Close(fd)
		delete(h.sysConf, dir)
	}
	h.nl.Close()
	return h.hostNS.Close()
}

// NL is the netlink handle on the host namespace.
func (h *Host) NL() *netlink.Handle { return h.nl }

// NS is the host namespace's open descriptor (nftables dials into it).
func (h *Host) NS() netns.NsHandle { return h.hostNS }

// NSPath names the host namespace, for code that enters it.
func (h *Host) NSPath() string { return h.nsPath }

// SetLANNetworks replaces the macvlan/ipvlan networks LANWarnings checks
// (a Sync's).
func (h *Host) SetLANNetworks(nets map[string]datapath.Network) { h.parentNets = maps.Clone(nets) }

// LANNetworks is how many macvlan/ipvlan networks the host has.
func (h *Host) LANNetworks() int { return len(h.parentNets) }

// Prune deletes every link carrying a fabric alias that keep does not list
// under the link's name, except parents (the links desired networks hang
// off, and devices a datapath owns whatever their alias). Links without a
// fabric alias are never touched. pruned is told each link removed.
// (macvlan/ipvlan children live in the sandboxes and go with them or with
// DeleteChild.)
func (h *Host) Prune(keep map[string]string, parents map[string]bool, pruned func(name string)) error {
	links, err := RetryDump(h.nl.LinkList)
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	var errs []error
	for _, l := range links {
		a := l.Attrs()
		if !strings.HasPrefix(a.Alias, datapath.OwnerPrefix) {
			continue
		}
		if name, ok := keep[a.Alias]; (ok && name == a.Name) || parents[a.Name] {
			continue
		}
		if err := h.nl.LinkDel(l); err != nil && !IsNotFound(err) {
			errs = append(errs, fmt.Errorf("prune link %s: %w", a.Name, err))
			continue
		}
		pruned(a.Name + " (" + a.Alias + ")")
	}
	return errors.Join(errs...)
}
