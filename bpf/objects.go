//go:build linux

package bpf

import (
	"errors"
	"fmt"
	"io"
	"maps"

	"github.com/cilium/ebpf"
)

// Objects are the loaded endpoint program and the maps it uses. Descriptors
// close on garbage collection: keep Objects referenced while the program is
// attached, and close links before Objects.
type Objects struct {
	objs endpointObjects
}

// Load loads the endpoint program and creates its maps. opts may be nil; it
// is passed to cilium/ebpf unchanged (map pinning, verifier log, replacements).
func Load(opts *ebpf.CollectionOptions) (*Objects, error) {
	return LoadSpec(nil, opts)
}

// LoadSpec is Load with spec, a variant of the endpoint object (the same
// program and map names), in place of the built-in one; nil means the
// built-in one. It lets a test upgrade the datapath to a program that
// differs.
func LoadSpec(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions) (*Objects, error) {
	if spec == nil {
		var err error
		if spec, err = loadEndpoint(); err != nil {
			return nil, loadError("endpoint program", err)
		}
	}
	o := &Objects{}
	if err := spec.LoadAndAssign(&o.objs, opts); err != nil {
		return nil, loadError("endpoint program", err)
	}
	if err := o.checkShape(); err != nil {
		o.Close()
		return nil, err
	}
	return o, nil
}

// checkShape guards the Go side's assumptions about the maps, which matter
// most when a map was reused from a pin made by another build.
func (o *Objects) checkShape() error {
	if got := o.objs.Counters.MaxEntries(); got != countersMax {
		return fmt.Errorf("counters map has %d entries, want %d: %w", got, countersMax, ErrInvalid)
	}
	return nil
}

// sharedMaps are the maps every fabric program object uses; a second object
// (uplink, socket hooks) is loaded with these as MapReplacements so that all
// programs see one set of maps.
func (o *Objects) sharedMaps() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{
		"endpoints":      o.objs.Endpoints,
		"endpoint_by_ip": o.objs.EndpointByIp,
		"networks":       o.objs.Networks,
		"counters":       o.objs.Counters,
		"ports":          o.objs.Ports,
		"host_addrs":     o.objs.HostAddrs,
		"host_config":    o.objs.HostConfig,
		"subnets":        o.objs.Subnets,
		"ct":             o.objs.Ct,
		"ct_frag":        o.objs.CtFrag,
		"remotes":        o.objs.Remotes,
		"policy":         o.objs.Policy,
		"ct_quota":       o.objs.CtQuota,
		"ct_stats":       o.objs.CtStats,
	}
}

// sharedOptions is opts (nil: none) with the shared maps as replacements,
// for loading another object (uplink, socket hooks) onto o's maps. The
// caller's options are copied, not changed; a replacement of its own for a
// shared map would split that map between programs and is refused.
func (o *Objects) sharedOptions(opts *ebpf.CollectionOptions) (*ebpf.CollectionOptions, error) {
	var out ebpf.CollectionOptions
	if opts != nil {
		out = *opts
	}
	repl := maps.Clone(out.MapReplacements)
	if repl == nil {
		repl = make(map[string]*ebpf.Map)
	}
	for name, m := range o.sharedMaps() {
		if r, ok := repl[name]; ok && r != m {
			return nil, fmt.Errorf("map replacement %q would split the shared map from the endpoint program's: %w", name, ErrInvalid)
		}
		repl[name] = m
	}
	out.MapReplacements = repl
	return &out, nil
}

// loadOnto loads the object load returns onto o's maps, into to (the
// generated objects struct): the caller's opts with the shared maps as
// replacements (sharedOptions), and each shared map's spec sized as o's map
// is, since the connection table's size is an option (SetConntrackMax) and
// a map replacement must match its spec exactly. what names the object in
// the error.
func (o *Objects) loadOnto(what string, load func() (*ebpf.CollectionSpec, error), to any, opts *ebpf.CollectionOptions) error {
	shared, err := o.sharedOptions(opts)
	if err != nil {
		return fmt.Errorf("load %s: %w", what, err)
	}
	spec, err := load()
	if err != nil {
		return loadError(what, err)
	}
	for name, m := range o.sharedMaps() {
		if ms, ok := spec.Maps[name]; ok {
			ms.MaxEntries = m.MaxEntries()
		}
	}
	if err := spec.LoadAndAssign(to, shared); err != nil {
		return loadError(what, err)
	}
	return nil
}

// loadOn loads a program object onto shared's maps (see loadOnto) and
// hands it to wrap, the exported type that owns it: what every loader of
// a second object (tunnel, uplink, socket hooks) does.
func loadOn[O, W any](shared *Objects, what string, load func() (*ebpf.CollectionSpec, error), opts *ebpf.CollectionOptions, wrap func(O) *W) (*W, error) {
	var objs O
	if err := shared.loadOnto(what, load, &objs, opts); err != nil {
		return nil, err
	}
	return wrap(objs), nil
}

// loadError wraps a load failure, with the verifier's log when it has one
// (the only way to see why a program was rejected).
func loadError(what string, err error) error {
	var verr *ebpf.VerifierError
	if errors.As(err, &verr) {
		return fmt.Errorf("load %s: %w\n%+v", what, err, verr)
	}
	return fmt.Errorf("load %s: %w", what, err)
}

// FromEndpoint is the tc program for the ingress of an endpoint's host-side
// veth (traffic from the sandbox).
func (o *Objects) FromEndpoint() *ebpf.Program { return o.objs.FromEndpoint }

// Close releases the program and the maps (unpinned maps disappear).
func (o *Objects) Close() error {
	return closeAll("endpoint objects",
		o.objs.FromEndpoint, o.objs.Endpoints, o.objs.EndpointByIp, o.objs.Networks, o.objs.Counters,
		o.objs.Ports, o.objs.HostAddrs, o.objs.HostConfig, o.objs.Subnets, o.objs.Ct, o.objs.CtFrag,
		o.objs.Remotes, o.objs.Policy, o.objs.CtQuota, o.objs.CtStats)
}

// closeAll closes every one of cs, whatever the others do, and joins the
// errors under what.
func closeAll(what string, cs ...io.Closer) error {
	var errs []error
	for _, c := range cs {
		if err := c.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close %s: %w", what, err)
	}
	return nil
}
