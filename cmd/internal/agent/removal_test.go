package agent

import (
	"context"
	"errors"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/vishvananda/netlink"
)

// vethFake is the fake datapath with real veths: the host side in the
// test's host namespace, the peer in the sandbox's. Its DeleteEndpoint
// notes what was still there when it was called, then deletes the host
// side if it is, as the real datapaths do.
type vethFake struct {
	*fakeDatapath
	host *netlink.Handle

	mu      sync.Mutex
	deletes []vethDelete
}

type vethDelete struct {
	nsExisted, hostLeft bool
}

func (f *vethFake) EnsureEndpoint(ctx context.Context, n datapath.Network, ep datapath.Endpoint) error {
	if err := f.fakeDatapath.EnsureEndpoint(ctx, n, ep); err != nil {
		return err
	}
	sbns, err := os.Open(ep.NetNSPath)
	if err != nil {
		return err
	}
	defer sbns.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: ep.HostIfName}, PeerName: ep.IfName,
		PeerNamespace: netlink.NsFd(int(sbns.Fd()))}
	return f.host.LinkAdd(veth)
}

func (f *vethFake) DeleteEndpoint(ctx context.Context, n datapath.Network, ep datapath.Endpoint) error {
	l, err := f.host.LinkByName(ep.HostIfName)
	f.mu.Lock()
	f.deletes = append(f.deletes, vethDelete{nsExisted: netns.IsNamespace(ep.NetNSPath), hostLeft: err == nil})
	f.mu.Unlock()
	if err == nil {
		if err := f.host.LinkDel(l); err != nil {
			return err
		}
	}
	return f.fakeDatapath.DeleteEndpoint(ctx, n, ep)
}

// TestRemoveSandboxLetsTheKernelTakeTheVeths checks the order of a
// removal: the command is stopped and reaped, the namespace deleted, and
// only then is the datapath asked to delete the endpoint, by which time
// the kernel has deleted the veth with the namespace (deleting it alone
// costs an RCU grace period under the RTNL). Before, the datapath deleted
// the veth while the namespace still existed.
func TestRemoveSandboxLetsTheKernelTakeTheVeths(t *testing.T) {
	netnstest.RequireRoot(t)
	_, hostPath := netnstest.New(t, "rmh")
	dp := &vethFake{fakeDatapath: newFake(), host: netnstest.Handle(t, hostPath)}
	a := newTestAgentOn(t, t.TempDir(), dp, netlinkHost{hostPath})
	defer a.Close()
	ctx := context.Background()
	name := sandboxName(t, "rmv")
	sb, err := a.CreateSandbox(ctx, api.SandboxCreate{Name: name, Command: []string{"sleep", "600"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.RemoveSandbox(context.Background(), name) })
	if len(sb.Endpoints) != 1 || sb.PID <= 0 {
		t.Fatalf("sandbox: %+v", sb)
	}
	hostIf := sb.Endpoints[0].HostIfName
	if _, err := dp.host.LinkByName(hostIf); err != nil {
		t.Fatalf("host side %s of the new sandbox: %v", hostIf, err)
	}
	if err := a.RemoveSandbox(ctx, name); err != nil {
		t.Fatal(err)
	}
	dp.mu.Lock()
	deletes := append([]vethDelete(nil), dp.deletes...)
	dp.mu.Unlock()
	if len(deletes) != 1 {
		t.Fatalf("datapath asked to delete %d endpoints, want 1", len(deletes))
	}
	if deletes[0].nsExisted {
		t.Error("the namespace still existed when the datapath deleted the endpoint: want it deleted first")
	}
	if deletes[0].hostLeft {
		t.Errorf("host side %s still there when the datapath was asked: want the kernel to have taken it with the namespace", hostIf)
	}
	if _, err := dp.host.LinkByName(hostIf); err == nil {
		t.Errorf("host side %s left after the removal", hostIf)
	}
	// The command is stopped and reaped by the agent: no zombie left.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := os.Stat("/proc/" + strconv.Itoa(sb.PID))
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("command %d of the removed sandbox not reaped: %v", sb.PID, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if netns.IsNamespace(sb.NetNS) {
		t.Errorf("namespace %s left", sb.NetNS)
	}
}
