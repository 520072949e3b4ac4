package agent

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// TestConnectAdoptsRuntimeLink: a veth pair whose one end a runtime moved
// into a namespace (named eth3 there) becomes the endpoint as it is (its
// host side, the runtime's name, no default route from fabric, the
// sandbox's ports on it); a link that is missing, already fabric's, or
// whose other end is elsewhere is refused and nothing is made. The
// agent's side runs in a namespace of the test's own.
func TestConnectAdoptsRuntimeLink(t *testing.T) {
	netnstest.RequireRoot(t)
	_, hostNS := netnstest.New(t, "adopth")
	_, sbNS := netnstest.New(t, "adopts")
	dp := newFake()
	a := newKernelTestAgent(t, t.TempDir(), dp)
	defer a.Close()
	releaseHeldAtEnd(t, a)
	sbh := netnstest.Handle(t, sbNS)

	// Inside netns.Do (another goroutine) failures are returned, never
	// t.Fatal: that would leave Do waiting forever.
	err := netns.Do(hostNS, func() error {
		for _, host := range []string{"fdhadopt1", "fdhadopt2", "fdhadopt3"} {
			la := netlink.NewLinkAttrs()
			la.Name = host
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "fdc" + host[3:]}); err != nil {
				return fmt.Errorf("add veth %s: %w", host, err)
			}
		}
		// The runtime moves fdcadopt1 into the sandbox as eth3; fdcadopt2
		// stays on the host; fdhadopt3 is already fabric's.
		if err := runtimeMoves(sbNS, sbh, "fdcadopt1", "eth3"); err != nil {
			return err
		}
		other, err := netlink.LinkByName("fdhadopt3")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetAlias(other, "fabric:someone"); err != nil {
			return err
		}

		for link, want := range map[string]string{
			"fdhnothere": "not found",
			"fdhadopt2":  "is not in namespace",
			"fdhadopt3":  "waiting for adoption",
			"x/y":        "without '/'",
		} {
			_, err := a.Connect(context.Background(), DefaultNetworkName, api.Connect{Sandbox: sbNS, Link: link})
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("adopt %s: %v, want an error saying %q", link, err, want)
			}
		}
		if len(a.Sandboxes()) != 0 || len(dp.endpoints) != 0 {
			return fmt.Errorf("refused adoptions left %+v / %d endpoints", a.Sandboxes(), len(dp.endpoints))
		}

		got, err := a.Connect(context.Background(), DefaultNetworkName, api.Connect{Sandbox: sbNS, Link: "fdhadopt1"})
		if err != nil {
			return fmt.Errorf("adopt fdhadopt1: %w", err)
		}
		ep, ok := dp.endpoints[got.ID]
		if !ok || !ep.Adopted || ep.IfName != "eth3" || ep.HostIfName != "fdhadopt1" || ep.DefaultRoute {
			return fmt.Errorf("datapath endpoint %+v, want adopted eth3 on fdhadopt1 without a default route", ep)
		}
		if got.IfName != "eth3" || got.DefaultRoute == "" {
			return fmt.Errorf("API endpoint %+v: want eth3 and a default route left to the runtime", got)
		}
		// The same adoption again (a plugin that crashed before it heard
		// the answer asks once more) is the same endpoint.
		again, err := a.Connect(context.Background(), DefaultNetworkName, api.Connect{Sandbox: sbNS, Link: "fdhadopt1"})
		if err != nil || again.ID != got.ID || len(dp.endpoints) != 1 {
			return fmt.Errorf("repeated adoption: %+v, %v (%d endpoints), want endpoint %s again", again, err, len(dp.endpoints), got.ID)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// runtimeMoves does a runtime's part: peer (on the calling thread's
// namespace) goes into the namespace at path and is renamed name there.
func runtimeMoves(path string, sbh *netlink.Handle, peer, name string) error {
	l, err := netlink.LinkByName(peer)
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := netlink.LinkSetNsFd(l, int(f.Fd())); err != nil {
		return fmt.Errorf("move %s: %w", peer, err)
	}
	moved, err := sbh.LinkByName(peer)
	if err != nil {
		return err
	}
	return sbh.LinkSetName(moved, name)
}
