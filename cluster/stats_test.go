package cluster

import (
	"sync"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// TestStatsSuspectWhileMembershipChanges reads Stats over and over while
// memberlist rewrites its member records (metadata updates, a member cut
// off and suspected): run with -race, it must report nothing. The cut off
// member must show up in the suspect count, and leave it once it is
// reachable again (acked, or failed and back).
func TestStatsSuspectWhileMembershipChanges(t *testing.T) {
	p := newPartition()
	members := startCluster(t, 3, p.option)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			m := members[1].cfg.Meta
			m.TunnelPort = uint16(5000 + i%100)
			_ = members[1].UpdateMeta(m)
			time.Sleep(10 * time.Millisecond)
		}
	}()
	t.Cleanup(func() { close(stop); wg.Wait() })
	p.split(members[2])
	netnstest.Eventually(t, 20*time.Second, "node-2 suspected by node-0", func() bool {
		return members[0].Stats().Suspect == 1
	})
	p.heal()
	netnstest.Eventually(t, 20*time.Second, "no suspect after the partition heals", func() bool {
		return members[0].Stats().Suspect == 0
	})
}
