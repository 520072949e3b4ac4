package main

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/vishvananda/netlink"
)

// TestKernelRefSetup runs the density section's kernel reference in a
// host namespace of its own, point-to-point and on a bridge: each set-up
// answers ping from the host namespace, leaves no namespace or host link
// behind, and closing removes the bridge and its anchor port.
func TestKernelRefSetup(t *testing.T) {
	netnstest.RequireRoot(t)
	for _, withBridge := range []bool{false, true} {
		_, hostPath := netnstest.New(t, "drh")
		err := netns.Do(hostPath, func() error {
			return os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte("0 2147483647"), 0o644)
		})
		if err != nil {
			t.Fatalf("allow ICMP sockets: %v", err)
		}
		pg, err := newPinger(hostPath)
		if err != nil {
			t.Skipf("needs ICMP datagram sockets: %v", err)
		}
		t.Cleanup(pg.close)
		prefix := netnstest.UniqueName("dr")
		k, err := newKernelRef("t", hostPath, pg, withBridge, func(s string) string { return prefix + s })
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			took, err := k.timedSetup(context.Background())
			if err != nil {
				k.close()
				t.Fatalf("bridge=%v set-up %d: %v", withBridge, i, err)
			}
			t.Logf("bridge=%v set-up %d: %.2f ms", withBridge, i, took)
			if took <= 0 {
				t.Errorf("bridge=%v set-up %d took %v ms", withBridge, i, took)
			}
			if netns.IsNamespace(netns.Path(prefix + "zrt" + strconv.Itoa(i))) {
				t.Errorf("bridge=%v: namespace of set-up %d left", withBridge, i)
			}
		}
		nl := netnstest.Handle(t, hostPath)
		var made []string
		if k.bridge != nil {
			made = []string{k.bridge.Name, k.anchor.Attrs().Name, k.anchor.(*netlink.Veth).PeerName}
		}
		k.close()
		for _, name := range made {
			if _, err := nl.LinkByName(name); err == nil {
				t.Errorf("close left %s", name)
			}
		}
		// The kernel takes the veths with their namespaces, a moment later.
		err = pollFor(context.Background(), 10*time.Second, 10*time.Millisecond, func() bool {
			ls, err := nl.LinkList()
			if err != nil {
				return false
			}
			for _, l := range ls {
				if l.Type() == "veth" {
					return false
				}
			}
			return true
		})
		if err != nil {
			t.Errorf("bridge=%v: veths left in the host namespace: %v", withBridge, err)
		}
	}
}
