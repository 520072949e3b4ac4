package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// fakeHost is a host whose routes and links are fixed lists and whose
// sandbox namespaces are names in a set: the core's tests run without
// root on it. Its one link is lo, 127.0.0.1, MTU 65536 (the tunnel
// address of the cluster tests).
type fakeHost struct {
	mu         sync.Mutex
	routes     []netip.Prefix
	links      map[string]HostLink
	addrs      map[netip.Addr]string // address → link name
	namespaces map[string]bool
}

var _ Host = (*fakeHost)(nil)

// newFakeHost returns a host with the given routes (CIDRs).
func newFakeHost(routes ...string) *fakeHost {
	h := &fakeHost{
		links:      map[string]HostLink{"lo": {Name: "lo", Up: true, MTU: 65536}},
		addrs:      map[netip.Addr]string{netip.MustParseAddr("127.0.0.1"): "lo"},
		namespaces: map[string]bool{},
	}
	for _, r := range routes {
		h.routes = append(h.routes, netip.MustParsePrefix(r))
	}
	return h
}

func (h *fakeHost) HostRoutes() ([]netip.Prefix, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.routes), nil
}

func (h *fakeHost) Link(name string) (HostLink, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if l, ok := h.links[name]; ok {
		return l, nil
	}
	return HostLink{}, fmt.Errorf("interface %s: %w", name, errNoLink)
}

// VethPeer: the fake host has no veth pairs, so no peer is anywhere.
func (h *fakeHost) VethPeer(hostName, nsPath string) (HostLink, string, error) {
	l, err := h.Link(hostName)
	return l, "", err
}

func (h *fakeHost) LinkWithAddr(ip netip.Addr) (HostLink, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if name, ok := h.addrs[ip]; ok {
		return h.links[name], nil
	}
	return HostLink{}, fmt.Errorf("address %s: %w", ip, errNoLink)
}

// addLink adds (or replaces) a link.
func (h *fakeHost) addLink(l HostLink) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.links[l.Name] = l
}

func (h *fakeHost) CreateNamespace(name string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.namespaces[name] = true
	return nil
}

func (h *fakeHost) DeleteNamespace(name string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.namespaces, name)
	return nil
}

func (h *fakeHost) NamespaceExists(name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.namespaces[name]
}

// TestNetworkChecksAskTheHost: the checks of a new network's interfaces
// go through Host: a macvlan parent must exist and be up (for a VLAN
// sub-interface, its base), and a bridge name an interface not fabric's
// uses is refused; nothing is created by a refused request.
func TestNetworkChecksAskTheHost(t *testing.T) {
	host := newFakeHost()
	host.addLink(HostLink{Name: "eth7", Up: false})
	host.addLink(HostLink{Name: "eth8", Up: true})
	host.addLink(HostLink{Name: "br-theirs", Up: true})
	host.addLink(HostLink{Name: "br-ours", Up: true, Alias: "fabric:network"})
	a := newTestAgentOn(t, t.TempDir(), newFake(), host)
	defer a.Close()
	ctx := context.Background()
	lan := func(parent, subnet string) api.NetworkCreate {
		return api.NetworkCreate{Name: "lan", Driver: api.DriverMacvlan, Subnet: subnet, Options: map[string]string{"parent": parent}}
	}
	for _, c := range []struct {
		req  api.NetworkCreate
		want error
		says string
	}{
		{lan("eth7", "192.0.2.0/24"), ErrInvalid, "is down"},
		{lan("eth6", "192.0.2.0/24"), ErrInvalid, "does not exist"},
		{lan("eth6.10", "192.0.2.0/24"), ErrInvalid, "base interface eth6 does not exist"},
		{lan("eth7.10", "192.0.2.0/24"), ErrInvalid, "base interface eth7 is down"},
		{api.NetworkCreate{Name: "br", Subnet: "10.230.0.0/24", Options: map[string]string{"bridge_name": "br-theirs"}}, ErrConflict, "not fabric's"},
	} {
		before := len(a.Networks())
		_, err := a.CreateNetwork(ctx, c.req)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("create %+v: %v, want %v saying %q", c.req, err, c.want, c.says)
		}
		if len(a.Networks()) != before {
			t.Fatalf("refused create %+v made a network", c.req)
		}
	}
	for _, req := range []api.NetworkCreate{
		lan("eth8", "192.0.2.0/24"),
		{Name: "br", Subnet: "10.230.0.0/24", Options: map[string]string{"bridge_name": "br-ours"}},
	} {
		if _, err := a.CreateNetwork(ctx, req); err != nil {
			t.Errorf("create %+v: %v", req, err)
		}
	}
}
