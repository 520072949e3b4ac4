package plumb

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns"
)

// NFTable is the nftables table ("ip fabric") the kernel datapath owns
// entirely. The eBPF datapath removes it: its rules would translate the
// programs' traffic a second time.
const NFTable = "fabric"

// DeleteNFTable removes NFTable from the calling thread's namespace, if it
// is there, in both families fabric uses: "ip fabric" and the kernel
// datapath's anti-spoofing table "bridge fabric".
func DeleteNFTable() error { return deleteTables(NFTable) }

func deleteTables(names ...string) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	for _, name := range names {
		if err := deleteTable(c, name); err != nil {
			return err
		}
	}
	return nil
}

// Purge removes what either datapath leaves in the namespace at nsPath
// ("" = the caller's) when no agent runs: every link marked as fabric's
// (bridges, VXLAN devices, veths, VLAN sub-interfaces and shims) and the
// nftables tables (NFTable, ShimGuardTable). It is `fabricd reset`'s last
// step, for a stopped agent; links without fabric's mark are never touched.
func Purge(nsPath string) error {
	if nsPath == "" {
		nsPath = "/proc/self/ns/net"
	}
	h, err := netns.HandleAt(nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	var errs []error
	links, err := RetryDump(h.LinkList)
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		if !strings.HasPrefix(l.Attrs().Alias, datapath.OwnerPrefix) {
			continue
		}
		if err := h.LinkDel(l); err != nil && !IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete link %s: %w", l.Attrs().Name, err))
		}
	}
	errs = append(errs, netns.Do(nsPath, func() error { return deleteTables(NFTable, ShimGuardTable) }))
	return errors.Join(errs...)
}

// PortClash returns a port of a that b publishes too, on an overlapping
// host address: only one of them could be forwarded.
func PortClash(a, b []datapath.PortMapping) (datapath.PortMapping, bool) {
	for _, pa := range a {
		for _, pb := range b {
			if pa.Proto == pb.Proto && pa.HostPort == pb.HostPort && hostIPsOverlap(pa.HostIP, pb.HostIP) {
				return pa, true
			}
		}
	}
	return datapath.PortMapping{}, false
}

func hostIPsOverlap(a, b netip.Addr) bool {
	anyA := !a.IsValid() || a.IsUnspecified()
	anyB := !b.IsValid() || b.IsUnspecified()
	return anyA || anyB || a == b
}
