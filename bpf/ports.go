//go:build linux

package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// IP protocol numbers as the programs compare them.
const (
	ProtoTCP = 6
	ProtoUDP = 17
)

// Port is a published port: HostAddr:HostPort/Proto on the host leads to
// Target:TargetPort in a sandbox. An invalid HostAddr means every address
// of the host (those in SetHostAddrs).
type Port struct {
	Proto      uint8 // ProtoTCP or ProtoUDP
	HostAddr   netip.Addr
	HostPort   uint16
	Target     netip.Addr // the endpoint's address
	TargetPort uint16
}

// HostConfig is what the NAT and socket programs know of the host.
type HostConfig struct {
	NetNSCookie   uint64     // the host namespace's cookie (socket hooks act only there)
	SNATAddr      netip.Addr // masquerade source, the uplink's IPv4 address
	UplinkIfindex int
	NATPortMin    uint16 // masquerade source ports, inclusive
	NATPortMax    uint16
	// TunnelIfindex is the flow-based VXLAN device overlay traffic is
	// sent into; 0 means none (traffic to remote endpoints is dropped).
	TunnelIfindex int
	// TunnelLocal is the outer source address of that traffic; invalid
	// means the route's.
	TunnelLocal netip.Addr
}

// be16 is a port as the programs hold it: network byte order in memory.
func be16(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

func fromBE16(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}

func (p Port) key() (endpointPortKey, error) {
	if p.Proto != ProtoTCP && p.Proto != ProtoUDP {
		return endpointPortKey{}, fmt.Errorf("port protocol %d is neither tcp nor udp: %w", p.Proto, ErrInvalid)
	}
	if p.HostPort == 0 {
		return endpointPortKey{}, fmt.Errorf("host port 0: %w", ErrInvalid)
	}
	k := endpointPortKey{Port: be16(p.HostPort), Proto: p.Proto}
	if p.HostAddr.IsValid() && !p.HostAddr.IsUnspecified() {
		if !p.HostAddr.Is4() {
			return endpointPortKey{}, fmt.Errorf("host address %s is not IPv4: %w", p.HostAddr, ErrInvalid)
		}
		k.HostAddr = be32(p.HostAddr)
	}
	return k, nil
}

// PutPort publishes a port, replacing what the same key led to before.
func (o *Objects) PutPort(p Port) error {
	k, err := p.key()
	if err != nil {
		return err
	}
	if !p.Target.Is4() || p.Target.IsUnspecified() || p.TargetPort == 0 {
		return fmt.Errorf("port %d/%d: target %s:%d is not usable: %w", p.HostPort, p.Proto, p.Target, p.TargetPort, ErrInvalid)
	}
	v := endpointPortTarget{Addr: be32(p.Target), Port: be16(p.TargetPort)}
	if err := o.objs.Ports.Put(k, v); err != nil {
		return fmt.Errorf("put port %s:%d/%d: %w", p.HostAddr, p.HostPort, p.Proto, err)
	}
	return nil
}

// DeletePort unpublishes a port (Target and TargetPort are ignored); a
// missing one is not an error.
func (o *Objects) DeletePort(p Port) error {
	k, err := p.key()
	if err != nil {
		return err
	}
	if err := o.objs.Ports.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete port %s:%d/%d: %w", p.HostAddr, p.HostPort, p.Proto, err)
	}
	return nil
}

// Ports lists the published ports.
func (o *Objects) Ports() ([]Port, error) {
	return collect(o.objs.Ports, "ports", func(k endpointPortKey, v endpointPortTarget) Port {
		p := Port{Proto: k.Proto, HostPort: fromBE16(k.Port), Target: addrFromBE32(v.Addr), TargetPort: fromBE16(v.Port)}
		if k.HostAddr != 0 {
			p.HostAddr = addrFromBE32(k.HostAddr)
		}
		return p
	})
}

// SetHostAddrs makes the host_addrs map hold exactly addrs (IPv4 only;
// others are ignored).
func (o *Objects) SetHostAddrs(addrs []netip.Addr) error {
	want := map[uint32]bool{}
	for _, a := range addrs {
		if a.Is4() && !a.IsUnspecified() {
			want[be32(a)] = true
		}
	}
	for a := range want {
		if err := o.objs.HostAddrs.Put(a, uint32(1)); err != nil {
			return fmt.Errorf("put host address %s: %w", addrFromBE32(a), err)
		}
	}
	var stale []uint32
	err := eachEntry(o.objs.HostAddrs, func(k, _ uint32) {
		if !want[k] {
			stale = append(stale, k)
		}
	})
	if err != nil {
		return fmt.Errorf("list host addresses: %w", err)
	}
	for _, a := range stale {
		if err := o.objs.HostAddrs.Delete(a); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete host address %s: %w", addrFromBE32(a), err)
		}
	}
	return nil
}

// SetHostConfig writes the host's NAT and socket-hook settings.
func (o *Objects) SetHostConfig(c HostConfig) error {
	if c.SNATAddr.IsValid() && !c.SNATAddr.Is4() {
		return fmt.Errorf("masquerade address %s is not IPv4: %w", c.SNATAddr, ErrInvalid)
	}
	if c.NATPortMin == 0 || c.NATPortMax < c.NATPortMin {
		return fmt.Errorf("masquerade port range %d-%d is empty: %w", c.NATPortMin, c.NATPortMax, ErrInvalid)
	}
	if c.TunnelLocal.IsValid() && !c.TunnelLocal.Is4() {
		return fmt.Errorf("tunnel address %s is not IPv4: %w", c.TunnelLocal, ErrInvalid)
	}
	if c.TunnelIfindex < 0 {
		return fmt.Errorf("tunnel ifindex %d: %w", c.TunnelIfindex, ErrInvalid)
	}
	v := endpointHostConfig{
		NetnsCookie:   c.NetNSCookie,
		UplinkIfindex: uint32(c.UplinkIfindex),
		NatPortMin:    c.NATPortMin,
		NatPortMax:    c.NATPortMax,
		TunnelIfindex: uint32(c.TunnelIfindex),
	}
	if c.SNATAddr.IsValid() {
		v.SnatAddr = be32(c.SNATAddr)
	}
	if c.TunnelLocal.IsValid() {
		v.TunnelLocal = be32(c.TunnelLocal)
	}
	if err := o.objs.HostConfig.Put(uint32(0), v); err != nil {
		return fmt.Errorf("put host config: %w", err)
	}
	return nil
}
