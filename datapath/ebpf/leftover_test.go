//go:build linux

package ebpf

import (
	"context"
	"testing"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// TestSyncPrunesKernelLeftovers: a bridge and a VXLAN device a kernel
// datapath run left (fabric's alias on them) are pruned by the eBPF
// datapath's Sync, its own tunnel device is kept, and a remote with a bad
// MAC beside a good one is skipped, not an error.
func TestSyncPrunesKernelLeftovers(t *testing.T) {
	l := newOverlayLab(t)
	h1 := l.h1
	netnstest.Run(t, h1.name, "ip", "link", "add", "br-left", "type", "bridge")
	netnstest.Run(t, h1.name, "ip", "link", "set", "br-left", "alias", datapath.OwnerPrefix+l.net.ID)
	netnstest.Run(t, h1.name, "ip", "link", "add", "fvx4242", "type", "vxlan", "id", "4242", "dstport", "4799")
	netnstest.Run(t, h1.name, "ip", "link", "set", "fvx4242", "alias", datapath.OwnerPrefix+"vxlan:"+l.net.ID)
	ctx := context.Background()
	if err := h1.dp.Sync(ctx, l.state(h1)); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	for _, name := range []string{"br-left", "fvx4242"} {
		if netnstest.Cmd(h1.name, "ip", "link", "show", name).Run() == nil {
			t.Errorf("kernel-datapath leftover %s kept", name)
		}
	}
	if netnstest.Cmd(h1.name, "ip", "link", "show", tunDevice).Run() != nil {
		t.Errorf("Sync pruned the tunnel device %s", tunDevice)
	}
	good := l.h2.remote()
	bad := good
	bad.Addr, bad.MAC = bad.Addr.Next(), bad.MAC[:5]
	if err := h1.dp.SetRemotes(ctx, l.net, []datapath.Remote{good, bad}); err != nil {
		t.Errorf("SetRemotes with a short MAC beside a good one: %v, want it skipped", err)
	}
	if m, err := h1.dp.Metrics(); err != nil || len(m.SkippedRemotes) == 0 {
		t.Errorf("skipped remotes not counted: %v (%v)", m.SkippedRemotes, err)
	}
	if err := h1.ping(l.h2.ep.Addr.Addr(), 2); err != nil {
		t.Error(err)
	}
}
