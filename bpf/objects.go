//go:build linux

package bpf

import (
	"errors"
	"fmt"
	"io"

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
	o := &Objects{}
	if err := loadEndpointObjects(&o.objs, opts); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load endpoint program: %w\n%+v", err, verr)
		}
		return nil, fmt.Errorf("load endpoint program: %w", err)
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

// FromEndpoint is the tc program for the ingress of an endpoint's host-side
// veth (traffic from the sandbox).
func (o *Objects) FromEndpoint() *ebpf.Program { return o.objs.FromEndpoint }

// Close releases the program and the maps (unpinned maps disappear).
func (o *Objects) Close() error {
	var errs []error
	for _, c := range []io.Closer{
		o.objs.FromEndpoint, o.objs.Endpoints, o.objs.EndpointByIp, o.objs.Networks, o.objs.Counters,
	} {
		if err := c.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close endpoint objects: %w", err)
	}
	return nil
}
