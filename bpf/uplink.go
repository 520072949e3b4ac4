//go:build linux

package bpf

import (
	"github.com/cilium/ebpf"
)

// Uplink are the programs for the host's uplink (uplink.c): masquerade of
// endpoints' connections to the outside, published ports, and the early
// drop of traffic to unused fabric addresses. They work on the maps of the
// Objects they were loaded with; the connection tracking they share with
// the endpoint program's hairpin is the `ct` map there (see
// Objects.ConntrackStats).
//
// Where they go: ToUplink at tc (TCX) egress of the uplink, FromUplink at
// its tc ingress, XDP (optional) as its XDP program. XDP only translates
// in place and passes; FromUplink delivers to the endpoint, so XDP never
// runs without it.
type Uplink struct {
	objs uplinkObjects
}

// LoadUplink loads the uplink programs on top of shared's maps. opts may be
// nil; its MapReplacements must not name a shared map, which always comes
// from shared.
func LoadUplink(shared *Objects, opts *ebpf.CollectionOptions) (*Uplink, error) {
	return loadOn(shared, "uplink programs", loadUplink, opts, func(o uplinkObjects) *Uplink { return &Uplink{objs: o} })
}

// FromUplink is the tc program for the uplink's ingress: replies to
// masqueraded connections and published ports, translated and redirected
// to the endpoint's veth.
func (u *Uplink) FromUplink() *ebpf.Program { return u.objs.FromUplink }

// ToUplink is the tc program for the uplink's egress: masquerade, and the
// replies of published ports translated back to the published address.
func (u *Uplink) ToUplink() *ebpf.Program { return u.objs.ToUplink }

// XDP is the XDP program for the uplink: FromUplink's translations done in
// place, earlier, plus dropping what is addressed to a fabric address no
// endpoint holds.
func (u *Uplink) XDP() *ebpf.Program { return u.objs.XdpUplink }

// Close releases the programs and this object's handles on the shared maps
// (the maps stay as long as the Objects they came from, or their pins).
// Close links before.
func (u *Uplink) Close() error {
	return closeAll("uplink objects", &u.objs.uplinkPrograms, &u.objs.uplinkMaps)
}
