//go:build linux

package ebpf

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/datapathtest"
	fabricns "github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// TestHostShimGuard: on the eBPF datapath too, a macvlan sandbox reaches
// the host through its network's host shim, where no program runs; the
// shim guard keeps it out of the guarded ports (counted with the endpoint
// program's host-port drops) while the host's other ports still answer.
func TestHostShimGuard(t *testing.T) {
	netnstest.RequireRoot(t)
	const gossip = 7946
	dp, hostPath, sbPath := newShimGuardLab(t, gossip)
	for _, port := range []int{gossip, gossip + 1} {
		serveHostTCP(t, hostPath, port)
	}
	pc := netnstest.ListenPacket(t, hostPath, "udp4", fmt.Sprintf(":%d", gossip))
	t.Cleanup(func() { pc.Close() })

	for _, to := range []string{"10.79.0.254", "198.18.40.1"} {
		if err := dialHost(sbPath, "tcp4", fmt.Sprintf("%s:%d", to, gossip+1)); err != nil {
			t.Fatalf("the host's other port through the shim: %v", err)
		}
	}
	dropped := func() uint64 { return hostPortDrops(t, dp) }
	for _, to := range []string{"10.79.0.254", "198.18.40.1"} {
		before := dropped()
		if err := dialHost(sbPath, "tcp4", fmt.Sprintf("%s:%d", to, gossip)); err == nil {
			t.Errorf("macvlan sandbox reached the host's gossip port at %s through the shim", to)
		}
		if !netnstest.Poll(3*time.Second, func() bool { return dropped() > before }) {
			t.Errorf("gossip port at %s: drop not counted", to)
		}
	}
	before := dropped()
	if err := dialHost(sbPath, "udp4", fmt.Sprintf("10.79.0.254:%d", gossip)); err != nil {
		t.Fatal(err)
	}
	_ = pc.SetReadDeadline(time.Now().Add(time.Second))
	if _, from, err := pc.ReadFrom(make([]byte, 64)); err == nil {
		t.Errorf("the host's gossip UDP port got a datagram from %s through the shim", from)
	}
	if dropped() <= before {
		t.Error("UDP to the gossip port: drop not counted")
	}
}

// newShimGuardLab makes a host namespace with an uplink and a macvlan
// parent, an eBPF datapath guarding the gossip port (TCP and UDP), and a
// macvlan sandbox that routes the uplink address via the host shim. It
// returns the datapath and the host's and sandbox's namespace paths.
func newShimGuardLab(t *testing.T, gossip uint16) (*Datapath, string, string) {
	t.Helper()
	hostName, hostPath := netnstest.New(t, "fbh")
	swName, _ := netnstest.New(t, "fbw")
	uplink := netnstest.UniqueName("fu")
	netnstest.Run(t, hostName, "ip", "link", "add", uplink, "type", "veth", "peer", "name", "out0", "netns", swName)
	netnstest.Run(t, hostName, "ip", "addr", "add", "198.18.40.1/24", "dev", uplink)
	netnstest.Run(t, hostName, "ip", "link", "set", uplink, "up")
	netnstest.Run(t, hostName, "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "lan0", "netns", swName)
	netnstest.Run(t, hostName, "ip", "link", "set", "eth1", "up")
	netnstest.Run(t, swName, "ip", "link", "set", "lan0", "up")

	root := filepath.Join("/sys/fs/bpf", netnstest.UniqueName("fabric-test-"))
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	dp, err := New(nil, Options{NetNSPath: hostPath, BPFRoot: root, Uplink: uplink, XDP: XDPOff,
		GuardPorts: []datapath.HostPort{{Proto: "tcp", Port: gossip}, {Proto: "udp", Port: gossip}}})
	if err != nil {
		t.Fatalf("new eBPF datapath: %v", err)
	}
	t.Cleanup(func() { dp.Close() })

	ctx := context.Background()
	n := datapath.Network{ID: netnstest.UniqueName("sg-"), Name: "sg", Driver: datapath.DriverMacvlan, Parent: "eth1",
		Subnet: netip.MustParsePrefix("10.79.0.0/24"), Gateway: netip.MustParseAddr("10.79.0.1"), HostShim: netip.MustParseAddr("10.79.0.254")}
	if err := dp.EnsureNetwork(ctx, n); err != nil {
		t.Fatal(err)
	}
	sbName, sbPath := netnstest.New(t, "fbs")
	ep := datapath.Endpoint{ID: netnstest.UniqueName("ep-"), NetworkID: n.ID, NetNSPath: sbPath, IfName: "eth0",
		Addr: netip.MustParsePrefix("10.79.0.2/24"), MAC: net.HardwareAddr{2, 0, 10, 79, 0, 2}, DefaultRoute: true}
	if err := dp.EnsureEndpoint(ctx, n, ep); err != nil {
		t.Fatal(err)
	}
	// A hostile sandbox routes the host's uplink address via the shim.
	netnstest.Run(t, sbName, "ip", "route", "replace", "198.18.40.1/32", "via", "10.79.0.254", "dev", "eth0")
	return dp, hostPath, sbPath
}

// hostPortDrops is the endpoint program's count of packets dropped for a
// guarded host port.
func hostPortDrops(t *testing.T, dp *Datapath) uint64 {
	t.Helper()
	return datapathtest.Counter(t, dp, "from-endpoint", "drop", "host-port")
}

// serveHostTCP accepts on port in the namespace and closes each
// connection at once.
func serveHostTCP(t *testing.T, nsPath string, port int) {
	t.Helper()
	netnstest.Serve(t, nsPath, "tcp4", fmt.Sprintf(":%d", port), time.Second, func(c net.Conn) { _, _ = io.WriteString(c, "ok") })
}

// dialHost connects (TCP) or sends one datagram (UDP) from the namespace.
func dialHost(nsPath, network, addr string) error {
	return fabricns.Do(nsPath, func() error {
		c, err := net.DialTimeout(network, addr, 1500*time.Millisecond)
		if err != nil {
			return err
		}
		defer c.Close()
		if network == "udp4" {
			_, err = c.Write([]byte("?"))
			return err
		}
		_ = c.SetDeadline(time.Now().Add(1500 * time.Millisecond))
		b, err := io.ReadAll(c)
		if err == nil && string(b) != "ok" {
			err = fmt.Errorf("answer %q", b)
		}
		return err
	})
}
