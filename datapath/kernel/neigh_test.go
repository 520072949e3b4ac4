package kernel

import (
	"bytes"
	"net"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// TestEndpointNeighboursSeeded: a new endpoint's MAC is known to the host
// on the bridge, and the gateway's MAC to the sandbox, before any packet
// flows, so neither side broadcasts an ARP request that the bridge would
// flood to every sandbox of the network; traffic then works both ways.
func TestEndpointNeighboursSeeded(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	a := l.bridgeNetwork("neta", "br-a", "10.89.4.0/24", false)
	j := l.join(a, "ep1", "vh1", 2)
	find := func(h *netlink.Handle, link string, ip net.IP) *netlink.Neigh {
		t.Helper()
		lk, err := h.LinkByName(link)
		if err != nil {
			t.Fatal(err)
		}
		neighs, err := h.NeighList(lk.Attrs().Index, unix.AF_INET)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range neighs {
			if n.IP.Equal(ip) {
				return &n
			}
		}
		return nil
	}
	if n := find(l.hostNL, "br-a", j.ep.Addr.Addr().AsSlice()); n == nil || !bytes.Equal(n.HardwareAddr, j.ep.MAC) {
		t.Errorf("host neighbour entry for the endpoint: %+v, want %s", n, j.ep.MAC)
	}
	sbNL := netnstest.Handle(t, j.path)
	t.Cleanup(sbNL.Close)
	if n := find(sbNL, "eth0", a.Gateway.AsSlice()); n == nil || !bytes.Equal(n.HardwareAddr, bridgeMAC(a.ID)) {
		t.Errorf("sandbox neighbour entry for the gateway: %+v, want %s", n, bridgeMAC(a.ID))
	}
	mustPing(t, j.name, a.Gateway.String())
}
