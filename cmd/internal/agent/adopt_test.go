package agent

import (
	"context"
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

	err := netns.Do(hostNS, func() error {
		pair := func(host, peer string) {
			t.Helper()
			la := netlink.NewLinkAttrs()
			la.Name = host
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: peer}); err != nil {
				t.Fatalf("add veth %s: %v", host, err)
			}
		}
		pair("fdhadopt1", "fdcadopt1")
		pair("fdhadopt2", "fdcadopt2")
		pair("fdhadopt3", "fdcadopt3")
		// The runtime moves fdcadopt1 into the sandbox as eth3; fdcadopt2
		// stays on the host; fdhadopt3 is already fabric's.
		ns, err := os.Open(sbNS)
		if err != nil {
			t.Fatal(err)
		}
		defer ns.Close()
		if err := netlink.LinkSetNsFd(mustLink(t, "fdcadopt1"), int(ns.Fd())); err != nil {
			t.Fatal(err)
		}
		moved, err := sbh.LinkByName("fdcadopt1")
		if err != nil {
			t.Fatal(err)
		}
		if err := sbh.LinkSetName(moved, "eth3"); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetAlias(mustLink(t, "fdhadopt3"), "fabric:someone"); err != nil {
			t.Fatal(err)
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
			t.Fatalf("refused adoptions left %+v / %d endpoints", a.Sandboxes(), len(dp.endpoints))
		}

		got, err := a.Connect(context.Background(), DefaultNetworkName, api.Connect{Sandbox: sbNS, Link: "fdhadopt1"})
		if err != nil {
			t.Fatalf("adopt fdhadopt1: %v", err)
		}
		ep, ok := dp.endpoints[got.ID]
		if !ok || !ep.Adopted || ep.IfName != "eth3" || ep.HostIfName != "fdhadopt1" || ep.DefaultRoute {
			t.Fatalf("datapath endpoint %+v, want adopted eth3 on fdhadopt1 without a default route", ep)
		}
		if got.IfName != "eth3" || got.DefaultRoute == "" {
			t.Fatalf("API endpoint %+v: want eth3 and a default route left to the runtime", got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func mustLink(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}
