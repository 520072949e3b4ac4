//go:build linux

package bpf

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// Maps returns every map the programs share, by ELF name: what a datapath
// pins so that a restarted agent (or a new program version) keeps them.
func (o *Objects) Maps() map[string]*ebpf.Map { return o.sharedMaps() }

// EndpointIfindexes lists the host-side ifindexes the endpoints map holds.
func (o *Objects) EndpointIfindexes() ([]int, error) {
	return collect(o.objs.Endpoints, "endpoints", func(k uint32, _ endpointEndpoint) int { return int(k) })
}

// NetworkIDs lists the networks the networks map holds.
func (o *Objects) NetworkIDs() ([]NetID, error) {
	return collect(o.objs.Networks, "networks", func(k uint32, _ endpointNetwork) NetID { return NetID(k) })
}

// collect lists the entries of m as conv makes them; what names the map's
// contents in the error.
func collect[K, V, T any](m *ebpf.Map, what string, conv func(K, V) T) ([]T, error) {
	var out []T
	if err := eachEntry(m, func(k K, v V) { out = append(out, conv(k, v)) }); err != nil {
		return nil, fmt.Errorf("list %s: %w", what, err)
	}
	return out, nil
}

// eachEntry calls fn with every entry of m, keys and values decoded as K
// and V. The programs may change the map meanwhile: what fn sees is
// roughly a snapshot.
func eachEntry[K, V any](m *ebpf.Map, fn func(K, V)) error {
	var (
		k K
		v V
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		fn(k, v)
	}
	return it.Err()
}

// MapNames lists the maps of the endpoint object (the shared set) by ELF
// name, without loading anything: what a datapath looks for among its pins
// before Load.
func MapNames() ([]string, error) {
	spec, err := loadEndpoint()
	if err != nil {
		return nil, fmt.Errorf("read endpoint object: %w", err)
	}
	names := make([]string, 0, len(spec.Maps))
	for name := range spec.Maps {
		if name[0] == '.' {
			continue // .rodata, .bss: per object, never shared
		}
		names = append(names, name)
	}
	return names, nil
}
