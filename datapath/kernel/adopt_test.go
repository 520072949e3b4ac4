package kernel

import (
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// TestAdoptedEndpointKeepsRuntimeRoutes: a veth pair a container runtime
// put in place (made on the host without fabric's alias, one end moved
// into the sandbox, renamed, addressed and given the default route, as
// Docker does with a driver's interface) becomes the endpoint: the host
// side joins the bridge and the sandbox reaches the gateway, and neither
// the first ensure nor a repeated one touches the runtime's route.
func TestAdoptedEndpointKeepsRuntimeRoutes(t *testing.T) {
	l := newLab(t)
	sfx := netnstest.UniqueName("")[:4]
	n := l.bridgeNetwork("adn", "fb-adn"+sfx, "10.94.0.0/24", false)
	sbName, sbPath := l.sandbox()
	ep := endpoint("adep", n, sbPath, "eth5", "fvad"+sfx, 5, false)
	ep.Adopted = true

	// The runtime's part.
	la := netlink.NewLinkAttrs()
	la.Name, la.MTU = ep.HostIfName, n.MTU
	if err := l.hostNL.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "fvap" + sfx, PeerHardwareAddr: ep.MAC}); err != nil {
		t.Fatal(err)
	}
	moveLink(t, l.hostNL, "fvap"+sfx, sbPath)
	for _, c := range [][]string{
		{"ip", "link", "set", "fvap" + sfx, "name", "eth5"},
		{"ip", "addr", "add", ep.Addr.String(), "dev", "eth5"},
		{"ip", "link", "set", "eth5", "up"},
		{"ip", "route", "add", "default", "via", n.Gateway.String()},
	} {
		netnstest.Run(t, sbName, c...)
	}
	want := "default via " + n.Gateway.String() + " dev eth5"

	for i := range 2 {
		l.ensureEndpoint(n, ep)
		if out := netnstest.Run(t, sbName, "ip", "route", "show", "default"); !strings.Contains(out, want) {
			t.Fatalf("ensure %d: the runtime's default route is gone: %q, want %q", i+1, out, want)
		}
	}
	host := l.link(ep.HostIfName)
	if host.Attrs().MasterIndex != l.link(n.Bridge).Attrs().Index {
		t.Fatalf("adopted host side %s is not on bridge %s", ep.HostIfName, n.Bridge)
	}
	mustPing(t, sbName, n.Gateway.String())
}
