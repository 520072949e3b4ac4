package kernel

import "github.com/fabricnet/fabric/datapath/plumb"

// Purge removes what the kernel datapath leaves in the namespace at nsPath
// ("" = the caller's) when no agent runs: every link marked as fabric's
// and its nftables table (plumb.Purge). It is for a stopped agent.
func Purge(nsPath string) error { return plumb.Purge(nsPath) }
