//go:build linux

package bpf

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// GuardPorts is how many TCP and how many UDP host ports Policy can guard.
const GuardPorts = 4

// DefaultConntrackMax is the size of the connection table unless a loader
// says otherwise (MAX_CT in fabric.h).
const DefaultConntrackMax = 262144

// Policy is what the programs enforce on the agent's behalf: the host's
// own fabric ports (gossip, tunnel, metrics) that no sandbox may reach,
// dropped with ReasonHostPort, and the quota of unanswered connections one
// source address may start per window (5 s), past which its new
// connections are dropped with ReasonCTQuota.
type Policy struct {
	GuardTCP, GuardUDP []uint16 // at most GuardPorts each; 0 is not a port
	// TunnelPort is dropped for UDP to any destination (0: none): a
	// sandbox masqueraded to its host's address must not reach another
	// node's tunnel either, where it would pass for its host.
	TunnelPort   uint16
	CTPendingMax uint32 // 0: no quota
}

// SetPolicy replaces the policy.
func (o *Objects) SetPolicy(p Policy) error {
	var v endpointHostPolicy
	for _, c := range []struct {
		proto string
		in    []uint16
		out   *[GuardPorts]uint16
	}{{"tcp", p.GuardTCP, &v.GuardTcp}, {"udp", p.GuardUDP, &v.GuardUdp}} {
		if len(c.in) > GuardPorts {
			return fmt.Errorf("%d guarded %s ports, at most %d: %w", len(c.in), c.proto, GuardPorts, ErrInvalid)
		}
		for i, port := range c.in {
			if port == 0 {
				return fmt.Errorf("guarded %s port 0: %w", c.proto, ErrInvalid)
			}
			c.out[i] = be16(port)
		}
	}
	v.CtPendingMax = p.CTPendingMax
	if p.TunnelPort != 0 {
		v.TunnelPort = be16(p.TunnelPort)
	}
	if err := o.objs.Policy.Put(uint32(0), v); err != nil {
		return fmt.Errorf("put policy: %w", err)
	}
	return nil
}

// Policy reads the policy back.
func (o *Objects) Policy() (Policy, error) {
	var v endpointHostPolicy
	if err := o.objs.Policy.Lookup(uint32(0), &v); err != nil {
		return Policy{}, fmt.Errorf("read policy: %w", err)
	}
	p := Policy{CTPendingMax: v.CtPendingMax}
	if v.TunnelPort != 0 {
		p.TunnelPort = fromBE16(v.TunnelPort)
	}
	for _, port := range v.GuardTcp {
		if port != 0 {
			p.GuardTCP = append(p.GuardTCP, fromBE16(port))
		}
	}
	for _, port := range v.GuardUdp {
		if port != 0 {
			p.GuardUDP = append(p.GuardUDP, fromBE16(port))
		}
	}
	return p, nil
}

// EndpointSpec is the built-in endpoint object (the shared maps and the
// endpoint program), to adjust before LoadSpec.
func EndpointSpec() (*ebpf.CollectionSpec, error) {
	spec, err := loadEndpoint()
	if err != nil {
		return nil, loadError("endpoint program", err)
	}
	return spec, nil
}

// SetConntrackMax sizes the connection table of spec (an endpoint object)
// to n entries, two per connection; n 0 leaves the built-in size. A pinned
// table of another size is then incompatible and is recreated by the
// loader.
func SetConntrackMax(spec *ebpf.CollectionSpec, n int) error {
	if n == 0 {
		return nil
	}
	if n < 64 || n > 1<<26 {
		return fmt.Errorf("conntrack size %d must be 64 to %d entries: %w", n, 1<<26, ErrInvalid)
	}
	m, ok := spec.Maps["ct"]
	if !ok {
		return fmt.Errorf("endpoint object has no ct map: %w", ErrInvalid)
	}
	m.MaxEntries = uint32(n)
	return nil
}
