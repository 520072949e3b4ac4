package kernel

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
	fabricns "github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// txPackets is how many frames the bridge has handed to the host veth
// name (its transmit counter): every flood reaches it.
func (l *lab) txPackets(name string) uint64 {
	l.t.Helper()
	return l.link(name).Attrs().Statistics.TxPackets
}

// TestFirstPingFloodsNoOtherPort: the host pinging a new endpoint, and the
// endpoint answering, resolve each other without a broadcast (ARP) or an
// unknown-unicast flood reaching the bridge's other ports: with 1,000
// sandboxes each flood is processed 1,000 times, on the set-up path.
func TestFirstPingFloodsNoOtherPort(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	n := l.bridgeNetwork("netf", "br-f", "10.89.40.0/24", false)
	l.join(n, "epf1", "vhf1", 2)
	l.join(n, "epf2", "vhf2", 3)
	j3 := l.join(n, "epf3", "vhf3", 4)
	l.join(n, "epf4", "vhf4", 5)
	l.join(n, "epf5", "vhf5", 6)
	ports := []string{"vhf1", "vhf2", "vhf3", "vhf4", "vhf5"}
	// The bridge's own IPv6 start-up chatter (router solicitations, MLD
	// reports, at random delays) reaches every port too; it is not
	// per endpoint and must not land in the window.
	err := fabricns.Do(l.hostPath, func() error { return plumb.EnsureSysctl("net/ipv6/conf/br-f/disable_ipv6", "1") })
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	// Multicast from the sandboxes is not flooded to the ports here.
	// What the bridge sends itself is flooded whatever the port flags
	// say: its IGMP reports go out at random delays after it got its
	// address, and one reached every port inside a window on 6.1, twice.
	// So each of up to three first pings (to endpoints nobody has talked
	// to yet) gets a window, and one clean window passes: without the
	// seeded entries every first ping floods (the host's ARP broadcast),
	// so all three windows fail.
	for _, port := range ports {
		l.setMcastFlood(port, false)
	}
	var seen []string
	for i, target := range []int{2, 3, 4} { // j3, epf4, epf5
		addr := fmt.Sprintf("10.89.40.%d", target+2)
		before := make([]uint64, len(ports))
		for k, p := range ports {
			before[k] = l.txPackets(p)
		}
		mustPing(t, l.hostName, addr)
		var got []string
		for k, p := range ports {
			d := l.txPackets(p) - before[k]
			if (k == target && d != 1) || (k != target && d != 0) {
				got = append(got, fmt.Sprintf("%s sent %d", p, d))
			}
		}
		if len(got) == 0 {
			break
		}
		seen = append(seen, fmt.Sprintf("ping %d to %s: %s", i+1, addr, strings.Join(got, ", ")))
	}
	if len(seen) == 3 {
		t.Errorf("every first ping to a new endpoint reached other ports or sent more than the echo request to its own (want 0 frames to the others and 1, the echo request, to its own):\n%s", strings.Join(seen, "\n"))
	}
	// Sandboxes still reach each other (they resolve by ARP) and the
	// gateway.
	mustPing(t, j3.name, "10.89.40.2")
	mustPing(t, j3.name, "10.89.40.1")
}

// setMcastFlood sets the bridge port flag mcast_flood of host veth port
// (bridge link set dev PORT mcast_flood on|off).
func (l *lab) setMcastFlood(port string, on bool) {
	l.t.Helper()
	idx := l.link(port).Attrs().Index
	err := fabricns.Do(l.hostPath, func() error {
		req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
		msg := nl.NewIfInfomsg(unix.AF_BRIDGE)
		msg.Index = int32(idx)
		req.AddData(msg)
		info := nl.NewRtAttr(unix.IFLA_PROTINFO|unix.NLA_F_NESTED, nil)
		flag := []byte{0}
		if on {
			flag[0] = 1
		}
		info.AddRtAttr(nl.IFLA_BRPORT_MCAST_FLOOD, flag)
		req.AddData(info)
		_, err := req.Execute(unix.NETLINK_ROUTE, 0)
		return err
	})
	if err != nil {
		l.t.Fatalf("set mcast_flood of %s: %v", port, err)
	}
}

// hostNeighbour is the host's entry for ip on the bridge br, or nil.
func (l *lab) hostNeighbour(br string, ip netip.Addr) *netlink.Neigh {
	l.t.Helper()
	for _, e := range neighbours(l.t, l.hostPath, br) {
		if a, ok := netip.AddrFromSlice(e.IP); ok && a.Unmap() == ip {
			return &e
		}
	}
	return nil
}

// TestEndpointNeighboursFollowEndpoint: the host's permanent entry for an
// endpoint is there after Ensure, put back by Sync when removed (counted as
// a repair), replaced when changed, removed with the endpoint and, if left
// behind, by Sync.
func TestEndpointNeighboursFollowEndpoint(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	n := l.bridgeNetwork("netg", "br-g", "10.89.41.0/24", false)
	j := l.join(n, "epg1", "vhg1", 2)
	ip := j.ep.Addr.Addr()
	e := l.hostNeighbour("br-g", ip)
	if e == nil || e.State != netlink.NUD_PERMANENT || !slices.Equal(e.HardwareAddr, j.ep.MAC) {
		t.Fatalf("host neighbour for %s: %+v, want permanent -> %s", ip, e, j.ep.MAC)
	}
	gw := sandboxNeighbour(t, j.path, n.Gateway)
	if !slices.Equal(gw, bridgeMAC(n.ID)) {
		t.Errorf("sandbox neighbour for the gateway: %s, want %s", gw, bridgeMAC(n.ID))
	}

	state := datapath.State{Networks: []datapath.Network{n}, Endpoints: []datapath.Endpoint{j.ep}}
	sync := func() {
		t.Helper()
		if err := l.dp.Sync(context.Background(), state); err != nil {
			t.Fatalf("Sync: %v", err)
		}
	}
	sync()
	base := l.repairs(datapath.RepairNeigh)

	// Removed by hand: Sync puts it back and counts it.
	if err := l.hostNL.NeighDel(e); err != nil {
		t.Fatal(err)
	}
	sync()
	if e := l.hostNeighbour("br-g", ip); e == nil || e.State != netlink.NUD_PERMANENT {
		t.Errorf("after Sync host neighbour for %s: %+v, want it back", ip, e)
	}
	// Changed by hand (another MAC): Sync puts the endpoint's back.
	bad := *e
	bad.HardwareAddr = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x66}
	if err := l.hostNL.NeighSet(&bad); err != nil {
		t.Fatal(err)
	}
	sync()
	if e := l.hostNeighbour("br-g", ip); e == nil || !slices.Equal(e.HardwareAddr, j.ep.MAC) {
		t.Errorf("after Sync host neighbour for %s: %+v, want -> %s", ip, e, j.ep.MAC)
	}
	if got := l.repairs(datapath.RepairNeigh) - base; got != 2 {
		t.Errorf("neighbour repairs %d, want 2", got)
	}

	// A stale permanent entry (an endpoint this agent no longer has) goes.
	stale := netip.MustParseAddr("10.89.41.9")
	br := l.link("br-g")
	err := l.hostNL.NeighSet(&netlink.Neigh{LinkIndex: br.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
		IP: stale.AsSlice(), HardwareAddr: net.HardwareAddr{0x02, 0x42, 10, 89, 41, 9}})
	if err != nil {
		t.Fatal(err)
	}
	sync()
	if e := l.hostNeighbour("br-g", stale); e != nil {
		t.Errorf("stale host neighbour %s left by Sync: %+v", stale, e)
	}

	// Deleting the endpoint removes its entry.
	if err := l.dp.DeleteEndpoint(context.Background(), n, j.ep); err != nil {
		t.Fatal(err)
	}
	if e := l.hostNeighbour("br-g", ip); e != nil {
		t.Errorf("host neighbour for %s left after DeleteEndpoint: %+v", ip, e)
	}
}

// repairs is how many repairs of kind the lab's datapath has counted.
func (l *lab) repairs(kind string) uint64 {
	l.t.Helper()
	m, err := l.dp.Metrics()
	if err != nil {
		l.t.Fatalf("Metrics: %v", err)
	}
	return m.Repairs[kind]
}

// TestDeletingAnOldEndpointKeepsTheNewOnesNeighbour: a new endpoint took an
// address before the old one's delete came (a reconcile after a restart).
// Deleting the old one, without its MAC as the agent deletes, leaves the
// new one's host entry alone; deleting the new one removes it.
func TestDeletingAnOldEndpointKeepsTheNewOnesNeighbour(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	n := l.bridgeNetwork("netnb", "br-nb", "10.89.47.0/24", false)
	old := l.join(n, "epnb1", "vhnb1", 2)
	_, path := l.sandbox()
	cur := endpoint("epnb2", n, path, "eth0", "vhnb2", 2, true)
	cur.MAC = net.HardwareAddr{0x02, 0x42, 0, 0, 0, 0x77}
	l.ensureEndpoint(n, cur)
	ip := cur.Addr.Addr()
	if e := l.hostNeighbour("br-nb", ip); e == nil || !slices.Equal(e.HardwareAddr, cur.MAC) {
		t.Fatalf("host neighbour for %s: %+v, want -> %s (the newer endpoint)", ip, e, cur.MAC)
	}

	del := func(ep datapath.Endpoint) {
		t.Helper()
		ep.MAC = nil
		if err := l.dp.DeleteEndpoint(context.Background(), n, ep); err != nil {
			t.Fatal(err)
		}
	}
	del(old.ep)
	if e := l.hostNeighbour("br-nb", ip); e == nil || !slices.Equal(e.HardwareAddr, cur.MAC) {
		t.Errorf("after deleting the old endpoint, host neighbour for %s: %+v, want -> %s", ip, e, cur.MAC)
	}
	del(cur)
	if e := l.hostNeighbour("br-nb", ip); e != nil {
		t.Errorf("host neighbour for %s left after deleting its endpoint: %+v", ip, e)
	}
}
