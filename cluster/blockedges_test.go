package cluster

import (
	"testing"
	"time"
)

// Addresses handed out never end a block: not its first (10.77.1.0, which
// users and tools take for a network address) nor its last (10.77.1.255),
// however many blocks a node fills.
func TestAllocateSkipsBlockEdges(t *testing.T) {
	members := startCluster(t, 1)
	createNetwork(t, members, "edges", "10.77.0.0/16")
	ctx := timeoutCtx(t, 30*time.Second)
	// Two full /24 blocks and a bit: 254 usable addresses in the first
	// (the subnet's network address and gateway are in it too), 254 in the
	// second.
	for i := range 520 {
		ip, err := members[0].AllocateIP(ctx, "edges", "ep")
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if last := ip.As4()[3]; last == 0 || last == 255 {
			t.Fatalf("allocation %d handed out %s, the edge of its block", i, ip)
		}
	}
}
