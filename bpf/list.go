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
	var (
		k   uint32
		v   endpointEndpoint
		out []int
	)
	it := o.objs.Endpoints.Iterate()
	for it.Next(&k, &v) {
		out = append(out, int(k))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list endpoints: %w", err)
	}
	return out, nil
}

// NetworkIDs lists the networks the networks map holds.
func (o *Objects) NetworkIDs() ([]NetID, error) {
	var (
		k   uint32
		v   endpointNetwork
		out []NetID
	)
	it := o.objs.Networks.Iterate()
	for it.Next(&k, &v) {
		out = append(out, NetID(k))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list networks: %w", err)
	}
	return out, nil
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
