package agent

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
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
