// Package kfeat tells tests which kernel features the running kernel has
// (802.1q, ipvlan, macvlan, netem, TCX), so a test that needs one skips
// with "needs X" on a kernel without it instead of failing. Each feature
// is probed once per process, for real, in a throw-away network
// namespace. It knows nothing about fabric.
package kfeat

import (
	"fmt"
	"os"
	"sync"
	"testing"

	fabricns "github.com/fabricnet/fabric/datapath/netns"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
)

// Feature is a kernel capability a test may need; its string is what
// the skip message names ("needs 8021q").
type Feature string

const (
	VLAN      Feature = "8021q"      // 802.1Q VLAN sub-interfaces (CONFIG_VLAN_8021Q)
	IPvlan    Feature = "ipvlan"     // ipvlan links, l2 and l3 (CONFIG_IPVLAN)
	IPvlanL3S Feature = "ipvlan-l3s" // ipvlan l3s mode (also needs netfilter)
	Macvlan   Feature = "macvlan"    // macvlan links (CONFIG_MACVLAN)
	Netem     Feature = "netem"      // the netem qdisc (CONFIG_NET_SCH_NETEM)
	TCX       Feature = "tcx"        // TCX BPF links (Linux 6.6)
)

var probes = map[Feature]func(parent netlink.Link) error{
	VLAN: func(p netlink.Link) error {
		return netlink.LinkAdd(&netlink.Vlan{LinkAttrs: child(p, "kfv"), VlanId: 10})
	},
	IPvlan: func(p netlink.Link) error {
		return netlink.LinkAdd(&netlink.IPVlan{LinkAttrs: child(p, "kfi"), Mode: netlink.IPVLAN_MODE_L2})
	},
	IPvlanL3S: func(p netlink.Link) error {
		return netlink.LinkAdd(&netlink.IPVlan{LinkAttrs: child(p, "kfs"), Mode: netlink.IPVLAN_MODE_L3S})
	},
	Macvlan: func(p netlink.Link) error {
		return netlink.LinkAdd(&netlink.Macvlan{LinkAttrs: child(p, "kfm"), Mode: netlink.MACVLAN_MODE_BRIDGE})
	},
	Netem: func(p netlink.Link) error {
		return netlink.QdiscAdd(netlink.NewNetem(netlink.QdiscAttrs{LinkIndex: p.Attrs().Index, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT},
			netlink.NetemQdiscAttrs{Latency: 1000}))
	},
	TCX: probeTCX,
}

func child(p netlink.Link, name string) netlink.LinkAttrs {
	a := netlink.NewLinkAttrs()
	a.Name, a.ParentIndex = name, p.Attrs().Index
	return a
}

func probeTCX(p netlink.Link) error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
		License:      "GPL",
	})
	if err != nil {
		return err
	}
	defer prog.Close()
	l, err := link.AttachTCX(link.TCXOptions{Interface: p.Attrs().Index, Program: prog, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return err
	}
	return l.Close()
}

var (
	mu      sync.Mutex
	results = map[Feature]error{}
)

// Have returns nil if the kernel has f, else why not. Needs root.
func Have(f Feature) error {
	mu.Lock()
	defer mu.Unlock()
	if err, ok := results[f]; ok {
		return err
	}
	probe, ok := probes[f]
	if !ok {
		return fmt.Errorf("kfeat: unknown feature %q", f)
	}
	err := fabricns.InNew(func() error { return probeOnVeth(probe) })
	results[f] = err
	return err
}

// Need skips tb with "needs root" or "needs <feature> (<why>)" unless
// the kernel has every feature fs.
func Need(tb testing.TB, fs ...Feature) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("skipping: needs root")
	}
	for _, f := range fs {
		if err := Have(f); err != nil {
			tb.Skipf("skipping: needs %s (this kernel: %v)", f, err)
		}
	}
}

// probeOnVeth runs probe on one end of a veth pair (veth, not dummy:
// some kernels, this project's dev VM's among them, have no dummy).
func probeOnVeth(probe func(netlink.Link) error) error {
	a := netlink.NewLinkAttrs()
	a.Name = "kfp0"
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: a, PeerName: "kfp1"}); err != nil {
		return fmt.Errorf("make a veth pair to probe on: %w", err)
	}
	l, err := netlink.LinkByName("kfp0")
	if err != nil {
		return fmt.Errorf("make a veth pair to probe on: %w", err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("make a veth pair to probe on: %w", err)
	}
	return probe(l)
}
