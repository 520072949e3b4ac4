package dockerplugin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

var errNotFound = errors.New("not found")

// fakeBackend is the agent as far as the plugin's IPAM and option
// handling need it: a set of networks with subnets and nothing else.
type fakeBackend struct {
	subnets map[string]netip.Prefix
	created []api.NetworkCreate
}

func (f *fakeBackend) CreateNetwork(_ context.Context, req api.NetworkCreate) (api.Network, error) {
	f.created = append(f.created, req)
	f.subnets[req.Name] = netip.MustParsePrefix(req.Subnet)
	return api.Network{Name: req.Name, Subnet: req.Subnet}, nil
}
func (f *fakeBackend) Network(ref string) (api.Network, error) {
	if s, ok := f.subnets[ref]; ok {
		return api.Network{Name: ref, Driver: api.DriverBridge, Subnet: s.String(), Gateway: s.Addr().Next().String()}, nil
	}
	return api.Network{}, errNotFound
}
func (f *fakeBackend) RemoveNetwork(context.Context, string) error { return nil }
func (f *fakeBackend) Connect(context.Context, string, api.Connect) (api.Endpoint, error) {
	return api.Endpoint{}, errors.New("no kernel here")
}
func (f *fakeBackend) Disconnect(context.Context, string, api.Disconnect) error { return nil }
func (f *fakeBackend) FreeSubnet(avoid []netip.Prefix) (netip.Prefix, error) {
	for i := 0; i < 10; i++ {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 50, byte(i), 0}), 24)
		free := true
		for _, s := range f.subnets {
			free = free && !s.Overlaps(p)
		}
		for _, s := range avoid {
			free = free && !s.Overlaps(p)
		}
		if free {
			return p, nil
		}
	}
	return netip.Prefix{}, errors.New("exhausted")
}
func (f *fakeBackend) CheckSubnet(sub netip.Prefix) error {
	for name, s := range f.subnets {
		if s != sub && s.Overlaps(sub) {
			return errors.New("subnet overlaps network " + name)
		}
	}
	return nil
}

// FreeAddress, like the agent's, reserves nothing: it gives the lowest
// address of the network's subnet (after the gateway) not in avoid.
func (f *fakeBackend) FreeAddress(name string, avoid map[netip.Addr]bool) (netip.Addr, error) {
	s, ok := f.subnets[name]
	if !ok {
		return netip.Addr{}, errNotFound
	}
	for a := s.Addr().Next().Next(); s.Contains(a); a = a.Next() {
		if !avoid[a] {
			return a, nil
		}
	}
	return netip.Addr{}, errors.New("exhausted")
}
func (f *fakeBackend) CheckAddress(string, netip.Addr) error { return nil }
func (f *fakeBackend) CheckPorts([]string) error             { return nil }
func (f *fakeBackend) OwnSandbox(context.Context, string, string, string, []string) error {
	return nil
}
func (f *fakeBackend) SetAliases(string, string, []string) error { return nil }

func newTestPlugin(t *testing.T, b Backend, state string) *Plugin {
	t.Helper()
	p, err := New(slog.New(slog.NewTextHandler(io.Discard, nil)), b, Options{
		Socket: filepath.Join(t.TempDir(), "fabric.sock"), StateFile: state,
		DockerHost: "unix://" + filepath.Join(t.TempDir(), "no-docker.sock"),
		IsNotFound: func(err error) bool { return errors.Is(err, errNotFound) },
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCreateNetworkOptions(t *testing.T) {
	req := func(generic map[string]any) createNetworkRequest {
		return createNetworkRequest{NetworkID: "n1", Options: map[string]any{keyGeneric: generic, keyInternal: true},
			IPv4Data: []ipamData{{AddressSpace: addressSpace, Pool: "10.9.0.0/24", Gateway: "10.9.0.1/24"}}}
	}
	n, err := planNetwork(req(map[string]any{"fabric.driver": "overlay", "mtu": "1400"}))
	if err != nil || n.Driver != api.DriverOverlay || n.Options["mtu"] != "1400" || !n.Internal || n.Gateway != "10.9.0.1" {
		t.Fatalf("planNetwork = %+v, %v", n, err)
	}
	for _, tc := range []struct {
		generic map[string]any
		want    string
	}{
		{map[string]any{"foo": "bar"}, "unknown option -o foo"},
		{map[string]any{"fabric.driver": "weave"}, "must be bridge, overlay, macvlan or ipvlan"},
		{map[string]any{"mtu": 1400.0}, "must be a string"},
	} {
		if _, err := planNetwork(req(tc.generic)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("options %v: error %v, want one saying %q", tc.generic, err, tc.want)
		}
	}
	defaultIPAM := req(nil)
	defaultIPAM.IPv4Data[0].AddressSpace = "LocalDefault"
	if _, err := planNetwork(defaultIPAM); err == nil || !strings.Contains(err.Error(), "--ipam-driver fabric") {
		t.Errorf("Docker's default IPAM: %v, want a refusal naming --ipam-driver fabric", err)
	}
	v6 := req(nil)
	v6.IPv6Data = []ipamData{{Pool: "fd00::/64"}}
	if _, err := planNetwork(v6); err == nil || !strings.Contains(err.Error(), "IPv6") {
		t.Errorf("IPv6 data: %v, want a refusal naming IPv6", err)
	}
}

func TestPortSpecs(t *testing.T) {
	pm := []any{
		map[string]any{"Proto": 6.0, "Port": 80.0, "HostPort": 8080.0, "HostPortEnd": 8080.0, "HostIP": ""},
		map[string]any{"Proto": 17.0, "Port": 53.0, "HostPort": 5353.0, "HostIP": "127.0.0.1"},
	}
	got, err := portSpecs(pm)
	if err != nil || strings.Join(got, " ") != "8080:80/tcp 127.0.0.1:5353:53/udp" {
		t.Fatalf("portSpecs = %v, %v", got, err)
	}
	random := []any{map[string]any{"Proto": 6.0, "Port": 80.0, "HostPort": 0.0}}
	if _, err := portSpecs(random); err == nil || !strings.Contains(err.Error(), "explicit host port") {
		t.Fatalf("a random host port: %v, want a refusal", err)
	}
	sctp := []any{map[string]any{"Proto": 132.0, "Port": 80.0, "HostPort": 80.0}}
	if _, err := portSpecs(sctp); err == nil {
		t.Fatal("an SCTP port was accepted")
	}
}

// Pools are checked against fabric's networks and against each other, and
// survive a restart of the plugin (Docker never asks again).
func TestRequestPoolChecksAndPersists(t *testing.T) {
	b := &fakeBackend{subnets: map[string]netip.Prefix{"existing": netip.MustParsePrefix("10.60.0.0/16")}}
	state := filepath.Join(t.TempDir(), "docker-plugin.json")
	p := newTestPlugin(t, b, state)
	if _, err := p.requestPool(requestPoolRequest{Pool: "10.60.5.0/24"}); err == nil || !strings.Contains(err.Error(), "overlaps network existing") {
		t.Fatalf("overlapping subnet: %v", err)
	}
	if _, err := p.requestPool(requestPoolRequest{Pool: "10.60.0.0/16"}); err != nil {
		t.Fatalf("the exact subnet of a network (to adopt it): %v", err)
	}
	r, err := p.requestPool(requestPoolRequest{})
	if err != nil {
		t.Fatal(err)
	}
	auto := r.(requestPoolResponse).Pool
	if _, err := p.requestPool(requestPoolRequest{Pool: auto}); err == nil || !strings.Contains(err.Error(), "another Docker network") {
		t.Fatalf("a subnet handed to another Docker network: %v", err)
	}
	for _, bad := range []requestPoolRequest{
		{Pool: "10.70.0.1/24"}, {Pool: "10.70.0.0/24", SubPool: "10.71.0.0/25"}, {V6: true}, {Options: map[string]string{"x": "y"}},
	} {
		if _, err := p.requestPool(bad); err == nil {
			t.Errorf("requestPool(%+v) accepted", bad)
		}
	}
	gw, err := p.requestAddress(requestAddressRequest{PoolID: auto, Options: map[string]string{"RequestAddressType": gatewayRequest}})
	if err != nil || gw.(requestAddressResponse).Address != netip.MustParsePrefix(auto).Addr().Next().String()+"/24" {
		t.Fatalf("gateway = %v, %v", gw, err)
	}
	if _, err := p.requestAddress(requestAddressRequest{PoolID: auto, Address: "192.0.2.1"}); err == nil || !strings.Contains(err.Error(), "outside") {
		t.Fatalf("--ip outside the subnet: %v", err)
	}

	again := newTestPlugin(t, b, state)
	if len(again.st.Pools) != 2 || again.st.Pools[auto] == nil || again.st.Pools[auto].Gateway == "" {
		t.Fatalf("pools after a restart: %+v", again.st.Pools)
	}
}

// Over the socket: Docker's handshake, and errors as {"Err": …} that
// Docker shows; a network Docker created is remembered across restarts.
func TestServeProtocol(t *testing.T) {
	b := &fakeBackend{subnets: map[string]netip.Prefix{}}
	state := filepath.Join(t.TempDir(), "docker-plugin.json")
	p := newTestPlugin(t, b, state)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", p.opts.Socket)
	}}}
	call := func(path, body string) (int, map[string]any) {
		t.Helper()
		var resp *http.Response
		var err error
		for i := 0; i < 100; i++ {
			if resp, err = c.Post("http://plugin"+path, contentType, strings.NewReader(body)); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		return resp.StatusCode, out
	}
	if code, out := call("/Plugin.Activate", ""); code != 200 || !strings.Contains(jsonString(out["Implements"]), "IpamDriver") {
		t.Fatalf("activate: %d %v", code, out)
	}
	code, out := call("/NetworkDriver.CreateNetwork", `{"NetworkID":"abc","Options":{"com.docker.network.generic":{"bogus":"1"}},"IPv4Data":[{"AddressSpace":"fabric","Pool":"10.9.0.0/24"}]}`)
	if code != 500 || !strings.Contains(jsonString(out["Err"]), "unknown option -o bogus") {
		t.Fatalf("bad option: %d %v", code, out)
	}
	if code, _ := call("/NetworkDriver.CreateNetwork", `{"NetworkID":"abcdef0123456789","Options":{},"IPv4Data":[{"AddressSpace":"fabric","Pool":"10.9.0.0/24","Gateway":"10.9.0.1/24"}]}`); code != 200 {
		t.Fatalf("create network: %d", code)
	}
	if code, out := call("/NetworkDriver.Nonsense", "{}"); code != 404 || out["Err"] == nil {
		t.Fatalf("unknown call: %d %v", code, out)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	again := newTestPlugin(t, b, state)
	if n := again.st.Networks["abcdef0123456789"]; n == nil || n.Subnet != "10.9.0.0/24" {
		t.Fatalf("Docker's network after a restart: %+v", again.st.Networks)
	}
	if _, bad := again.st.Networks["abc"]; bad {
		t.Fatal("a refused network was recorded")
	}
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// An address handed to Docker is not handed out again until Docker gives
// it back or the endpoint is gone: two containers started at once on a
// network never get the same one.
func TestHandedOutAddressIsHeld(t *testing.T) {
	b := &fakeBackend{subnets: map[string]netip.Prefix{"web": netip.MustParsePrefix("10.61.0.0/24")}}
	p := newTestPlugin(t, b, filepath.Join(t.TempDir(), "docker-plugin.json"))
	if _, err := p.requestPool(requestPoolRequest{Pool: "10.61.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	p.st.Networks["nid"] = &netRec{ID: "nid", Name: "web", Subnet: "10.61.0.0/24"}
	ask := func() string {
		t.Helper()
		r, err := p.requestAddress(requestAddressRequest{PoolID: "10.61.0.0/24"})
		if err != nil {
			t.Fatal(err)
		}
		return r.(requestAddressResponse).Address
	}
	first, second := ask(), ask()
	if first != "10.61.0.2/24" || second != "10.61.0.3/24" {
		t.Fatalf("two requests got %s and %s, want 10.61.0.2/24 and 10.61.0.3/24", first, second)
	}
	if _, err := p.releaseAddress(releaseAddressRequest{PoolID: "10.61.0.0/24", Address: "10.61.0.2"}); err != nil {
		t.Fatal(err)
	}
	if again := ask(); again != first {
		t.Fatalf("after ReleaseAddress: %s, want %s back", again, first)
	}
	if _, err := p.requestAddress(requestAddressRequest{PoolID: "10.61.0.0/24", Address: "10.61.0.3"}); err == nil ||
		!strings.Contains(err.Error(), "another container") {
		t.Fatalf("--ip of an address being handed out: %v", err)
	}
}
