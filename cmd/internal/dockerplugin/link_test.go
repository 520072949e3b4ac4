package dockerplugin

import (
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// internalBackend is fakeBackend whose networks named in internal are
// --internal and in macvlan are macvlan networks.
type internalBackend struct {
	*fakeBackend
	internal, macvlan map[string]bool
}

func (b *internalBackend) Network(ref string) (api.Network, error) {
	n, err := b.fakeBackend.Network(ref)
	n.Internal = b.internal[ref]
	if b.macvlan[ref] {
		n.Driver = api.DriverMacvlan
	}
	n.MTU = 1400
	return n, err
}

// Join hands Docker a veth pair that exists in the host's namespace when
// Join returns (Docker moves it right after), with the gateway unless the
// network is --internal; a macvlan network gets none. Leaving and deleting
// the endpoint removes a pair that was never adopted.
func TestJoinHandsDockerAVethPair(t *testing.T) {
	netnstest.RequireRoot(t)
	_, nsPath := netnstest.New(t, "fdjoin")
	b := &internalBackend{
		fakeBackend: &fakeBackend{subnets: map[string]netip.Prefix{
			"web": netip.MustParsePrefix("10.62.0.0/24"), "int": netip.MustParsePrefix("10.63.0.0/24"),
			"lan": netip.MustParsePrefix("10.64.0.0/24")}},
		internal: map[string]bool{"int": true}, macvlan: map[string]bool{"lan": true},
	}
	p := newTestPlugin(t, b, filepath.Join(t.TempDir(), "docker-plugin.json"))
	for _, n := range []string{"web", "int", "lan"} {
		p.st.Networks["nid-"+n] = &netRec{ID: "nid-" + n, Name: n, Subnet: b.subnets[n].String()}
	}
	// Called inside netns.Do (another goroutine): failures are reported
	// with t.Errorf, never t.Fatal, which would leave Do waiting forever.
	join := func(network, eid, addr string) joinResponse {
		t.Helper()
		if _, err := p.createEndpoint(createEndpointRequest{NetworkID: "nid-" + network, EndpointID: eid,
			Interface: &endpointInterface{Address: addr}}); err != nil {
			t.Errorf("CreateEndpoint on %s: %v", network, err)
			return joinResponse{}
		}
		r, err := p.join(joinRequest{NetworkID: "nid-" + network, EndpointID: eid, SandboxKey: "/var/run/docker/netns/x"})
		if err != nil {
			t.Errorf("Join on %s: %v", network, err)
			return joinResponse{}
		}
		return r.(joinResponse)
	}
	linkMTU := func(name string) int {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return -1
		}
		return l.Attrs().MTU
	}
	err := netns.Do(nsPath, func() error {
		web := join("web", "aaaaaaaaaaaa1111", "10.62.0.5/24")
		host, peer := linkNames("aaaaaaaaaaaa1111")
		if web.InterfaceName == nil || web.InterfaceName.SrcName != peer || web.InterfaceName.DstPrefix != "eth" ||
			web.Gateway != "10.62.0.1" || !web.DisableGatewayService {
			t.Errorf("Join on web: %+v (interface %+v), want %s with prefix eth, gateway 10.62.0.1, no gateway service",
				web, web.InterfaceName, peer)
		}
		if linkMTU(host) != 1400 || linkMTU(peer) != 1400 {
			t.Errorf("pair %s/%s: MTU %d/%d, want both 1400 (the network's)", host, peer, linkMTU(host), linkMTU(peer))
		}
		if l, err := netlink.LinkByName(peer); err != nil || l.Attrs().HardwareAddr.String() != "02:fa:0a:3e:00:05" {
			t.Errorf("%s for Docker: %v, %v; want fabric's MAC for 10.62.0.5, 02:fa:0a:3e:00:05", peer, l, err)
		}
		in := join("int", "bbbbbbbbbbbb2222", "10.63.0.5/24")
		if in.InterfaceName == nil || in.Gateway != "" {
			t.Errorf("Join on the --internal network: %+v, want an interface and no gateway", in)
		}
		lan := join("lan", "cccccccccccc3333", "10.64.0.5/24")
		if lan.InterfaceName != nil || lan.Gateway != "" {
			t.Errorf("Join on the macvlan network: %+v, want no interface (fabric makes the child itself)", lan)
		}
		if _, err := p.leave(endpointRequest{NetworkID: "nid-web", EndpointID: "aaaaaaaaaaaa1111"}); err != nil {
			t.Errorf("Leave: %v", err)
		}
		if _, err := p.deleteEndpoint(endpointRequest{NetworkID: "nid-int", EndpointID: "bbbbbbbbbbbb2222"}); err != nil {
			t.Errorf("DeleteEndpoint: %v", err)
		}
		for _, id := range []string{"aaaaaaaaaaaa1111", "bbbbbbbbbbbb2222"} {
			h, pr := linkNames(id)
			if linkMTU(h) != -1 || linkMTU(pr) != -1 {
				t.Errorf("pair %s/%s outlived its endpoint", h, pr)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
