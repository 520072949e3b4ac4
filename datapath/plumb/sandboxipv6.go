package plumb

import (
	"errors"
	"fmt"
	"io/fs"

	fabricns "github.com/fabricnet/fabric/datapath/netns"
)

// sandboxIPv6Off turns IPv6 off on a sandbox's veth (as Docker does on
// networks without IPv6). Fabric forwards IPv4 only: with IPv6 on, every
// idle sandbox sends router solicitations and neighbour discovery that
// nothing answers, which the eBPF datapath can only count as
// unsupported-l3 drops, drowning the real ones. A no-op where the kernel
// has no IPv6. The sandbox's /proc/sys is looked up in a procfs of its own
// (DoWithOwnProc): in the shared one, the lookup costs more the more
// sandboxes exist.
func sandboxIPv6Off(nsPath, ifName string) error {
	if nsPath == "" {
		return nil
	}
	err := sandboxSysctls(nsPath, func() error {
		err := EnsureSysctl("net/ipv6/conf/"+ifName+"/disable_ipv6", "1")
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("turn IPv6 off on %s in %s: %w", ifName, nsPath, err)
	}
	return nil
}

// sandboxSysctls runs fn, which sets sysctls, in a sandbox namespace;
// tests replace it to see how.
var sandboxSysctls = fabricns.DoWithOwnProc
