//go:build linux

package bpf

import (
	"github.com/cilium/ebpf"
)

// Tunnel is the program for the ingress of the host's flow-based VXLAN
// device (tunnel.c): overlay traffic from other nodes, delivered to the
// local endpoint it is for if that endpoint's network has the packet's
// VNI. It works on the maps of the Objects it was loaded with; the sending
// half is FromEndpoint's (to the device, with the tunnel key set).
type Tunnel struct {
	objs tunnelObjects
}

// LoadTunnel loads the tunnel program on top of shared's maps. opts may be
// nil; its MapReplacements must not name a shared map.
func LoadTunnel(shared *Objects, opts *ebpf.CollectionOptions) (*Tunnel, error) {
	return loadOn(shared, "tunnel program", loadTunnel, opts, func(o tunnelObjects) *Tunnel { return &Tunnel{objs: o} })
}

// FromTunnel is the tc program for the VXLAN device's ingress.
func (t *Tunnel) FromTunnel() *ebpf.Program { return t.objs.FromTunnel }

// Close releases the program and this object's handles on the shared maps.
// Close links before.
func (t *Tunnel) Close() error {
	return closeAll("tunnel objects", &t.objs.tunnelPrograms, &t.objs.tunnelMaps)
}
