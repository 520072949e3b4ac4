//go:build linux

package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
)

var (
	// ErrInvalid is returned for a network or endpoint the maps cannot hold.
	ErrInvalid = errors.New("invalid bpf map entry")
	// ErrConflict is returned when an address already belongs to another
	// endpoint: addresses are unique per host, whatever the network.
	ErrConflict = errors.New("address already used by another endpoint")
)

// NetID identifies a network in the maps. 0 is never valid, so that an
// unset field cannot match anything.
type NetID uint32

// Network is what the programs know of a network.
type Network struct {
	ID      NetID
	Subnet  netip.Prefix // IPv4
	Gateway netip.Addr   // in Subnet; the sandbox's next hop
	// RouterMAC is the MAC the sandbox sees for its gateway and for every
	// other address of its subnet (the program answers ARP with it).
	RouterMAC net.HardwareAddr
	// Internal networks get no masquerade and no published ports.
	Internal bool
	// VNI, if not 0, makes this an overlay network: addresses of its
	// subnet that no local endpoint holds are looked up in the remotes
	// (PutRemote) and reached through the tunnel with this VNI.
	VNI uint32
}

// Endpoint is what the programs know of an endpoint.
type Endpoint struct {
	HostIfindex int              // host-side veth, in the host namespace
	Addr        netip.Addr       // the sandbox's IPv4 address
	MAC         net.HardwareAddr // the sandbox-side MAC
	Network     NetID
}

// be32 is an IPv4 address as the programs hold it: network byte order in
// memory, read as a native-endian integer by the map marshaller.
// networkFlagInternal is NETWORK_F_INTERNAL in fabric.h.
const networkFlagInternal = 1

func be32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func addrFromBE32(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

func checkMAC(what string, mac net.HardwareAddr) error {
	if len(mac) != 6 {
		return fmt.Errorf("%s %q is not a 6-byte MAC: %w", what, mac, ErrInvalid)
	}
	if mac[0]&1 != 0 || [6]byte(mac) == [6]byte{} {
		return fmt.Errorf("%s %s is not a unicast MAC: %w", what, mac, ErrInvalid)
	}
	return nil
}

func (n Network) value() (endpointNetwork, error) {
	if n.ID == 0 {
		return endpointNetwork{}, fmt.Errorf("network id 0: %w", ErrInvalid)
	}
	if !n.Subnet.IsValid() || !n.Subnet.Addr().Is4() {
		return endpointNetwork{}, fmt.Errorf("network %d: subnet %s is not IPv4: %w", n.ID, n.Subnet, ErrInvalid)
	}
	if !n.Gateway.Is4() || !n.Subnet.Contains(n.Gateway) {
		return endpointNetwork{}, fmt.Errorf("network %d: gateway %s is not in %s: %w", n.ID, n.Gateway, n.Subnet, ErrInvalid)
	}
	if err := checkMAC(fmt.Sprintf("network %d: router MAC", n.ID), n.RouterMAC); err != nil {
		return endpointNetwork{}, err
	}
	mask := netip.AddrFrom4([4]byte(net.CIDRMask(n.Subnet.Bits(), 32)))
	if n.VNI > MaxVNI {
		return endpointNetwork{}, fmt.Errorf("network %d: VNI %d is more than 24 bits: %w", n.ID, n.VNI, ErrInvalid)
	}
	var flags uint16
	if n.Internal {
		flags |= networkFlagInternal
	}
	return endpointNetwork{
		Gateway:   be32(n.Gateway),
		Subnet:    be32(n.Subnet.Masked().Addr()),
		Mask:      be32(mask),
		RouterMac: [6]byte(n.RouterMAC),
		Flags:     flags,
		Vni:       n.VNI,
	}, nil
}

// PutNetwork creates or replaces a network.
func (o *Objects) PutNetwork(n Network) error {
	v, err := n.value()
	if err != nil {
		return err
	}
	old, hadOld, err := o.network(n.ID)
	if err != nil {
		return err
	}
	if err := o.objs.Networks.Put(uint32(n.ID), v); err != nil {
		return fmt.Errorf("put network %d: %w", n.ID, err)
	}
	// The subnet index after the network, so that a prefix found there
	// always leads to a network.
	if err := o.objs.Subnets.Put(subnetKey(n.Subnet), uint32(n.ID)); err != nil {
		return fmt.Errorf("put network %d: index subnet %s: %w", n.ID, n.Subnet, err)
	}
	if hadOld && old.Subnet.Masked() != n.Subnet.Masked() {
		if err := o.deleteSubnet(old.Subnet, n.ID); err != nil {
			return fmt.Errorf("put network %d: %w", n.ID, err)
		}
	}
	return nil
}

// DeleteNetwork removes a network; a missing one is not an error. Endpoints
// still on it drop everything they send until it is put back.
func (o *Objects) DeleteNetwork(id NetID) error {
	old, hadOld, err := o.network(id)
	if err != nil {
		return err
	}
	if hadOld {
		if err := o.deleteSubnet(old.Subnet, id); err != nil {
			return fmt.Errorf("delete network %d: %w", id, err)
		}
	}
	if err := o.objs.Networks.Delete(uint32(id)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete network %d: %w", id, err)
	}
	return nil
}

// subnetKey is a network's prefix as the `subnets` LPM trie keys it.
func subnetKey(p netip.Prefix) endpointSubnetKey {
	return endpointSubnetKey{Prefixlen: uint32(p.Bits()), Addr: be32(p.Masked().Addr())}
}

// deleteSubnet removes p from the subnet index if it still leads to id: a
// network that took the same prefix over keeps it.
func (o *Objects) deleteSubnet(p netip.Prefix, id NetID) error {
	k := subnetKey(p)
	var holder uint32
	err := o.objs.Subnets.Lookup(k, &holder)
	if errors.Is(err, ebpf.ErrKeyNotExist) || (err == nil && holder != uint32(id)) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up subnet %s: %w", p, err)
	}
	if err := o.objs.Subnets.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete subnet %s: %w", p, err)
	}
	return nil
}

func (o *Objects) network(id NetID) (Network, bool, error) {
	var v endpointNetwork
	err := o.objs.Networks.Lookup(uint32(id), &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return Network{}, false, nil
	}
	if err != nil {
		return Network{}, false, fmt.Errorf("look up network %d: %w", id, err)
	}
	ones, _ := net.IPMask(addrFromBE32(v.Mask).AsSlice()).Size()
	return Network{
		ID:        id,
		Subnet:    netip.PrefixFrom(addrFromBE32(v.Subnet), ones),
		Gateway:   addrFromBE32(v.Gateway),
		RouterMAC: net.HardwareAddr(v.RouterMac[:]),
		Internal:  v.Flags&networkFlagInternal != 0,
		VNI:       v.Vni,
	}, true, nil
}

// checkHost checks an endpoint's or remote's place, what in errors: a
// usable MAC, and an address that is one of the hosts (not the gateway) of
// network id, which must be in the map, and an overlay network (VNI set)
// if overlay is.
func (o *Objects) checkHost(what string, id NetID, addr netip.Addr, mac net.HardwareAddr, overlay bool) error {
	if err := checkMAC(what+": MAC", mac); err != nil {
		return err
	}
	n, ok, err := o.network(id)
	switch {
	case err != nil:
		return err
	case !ok:
		return fmt.Errorf("%s: network %d is not in the map; put it first: %w", what, id, ErrInvalid)
	case overlay && n.VNI == 0:
		return fmt.Errorf("%s: network %d is not an overlay network; put it as one first: %w", what, id, ErrInvalid)
	case !n.Subnet.Contains(addr) || addr == n.Gateway:
		return fmt.Errorf("%s: address %s is not a host address of %s: %w", what, addr, n.Subnet, ErrInvalid)
	}
	return nil
}

// PutEndpoint creates or replaces the endpoint on ep.HostIfindex. Its
// network must have been put first and must contain its address; an address
// held by another endpoint is ErrConflict (delete that one first).
func (o *Objects) PutEndpoint(ep Endpoint) error {
	if ep.HostIfindex <= 0 {
		return fmt.Errorf("endpoint ifindex %d: %w", ep.HostIfindex, ErrInvalid)
	}
	if !ep.Addr.Is4() || ep.Addr.IsUnspecified() {
		return fmt.Errorf("endpoint %d: address %s is not a usable IPv4 address: %w", ep.HostIfindex, ep.Addr, ErrInvalid)
	}
	if err := o.checkHost(fmt.Sprintf("endpoint %d", ep.HostIfindex), ep.Network, ep.Addr, ep.MAC, false); err != nil {
		return err
	}

	ifindex := uint32(ep.HostIfindex)
	v := endpointEndpoint{Ifindex: ifindex, Ipv4: be32(ep.Addr), Mac: [6]byte(ep.MAC), NetworkId: uint32(ep.Network)}
	var holder endpointEndpoint
	switch err := o.objs.EndpointByIp.Lookup(v.Ipv4, &holder); {
	case err == nil && holder.Ifindex != ifindex:
		return fmt.Errorf("endpoint %d: %s is held by ifindex %d: %w", ifindex, ep.Addr, holder.Ifindex, ErrConflict)
	case err != nil && !errors.Is(err, ebpf.ErrKeyNotExist):
		return fmt.Errorf("endpoint %d: look up %s: %w", ifindex, ep.Addr, err)
	}
	var old endpointEndpoint
	hadOld := true
	if err := o.objs.Endpoints.Lookup(ifindex, &old); errors.Is(err, ebpf.ErrKeyNotExist) {
		hadOld = false
	} else if err != nil {
		return fmt.Errorf("endpoint %d: look up: %w", ifindex, err)
	}

	// Reachable first, then allowed to send: in between, its packets are
	// dropped as coming from an unknown endpoint, never let through.
	if err := o.objs.EndpointByIp.Put(v.Ipv4, v); err != nil {
		return fmt.Errorf("endpoint %d: put address %s: %w", ifindex, ep.Addr, err)
	}
	if err := o.objs.Endpoints.Put(ifindex, v); err != nil {
		return fmt.Errorf("endpoint %d: put: %w", ifindex, err)
	}
	if hadOld && old.Ipv4 != v.Ipv4 {
		if err := o.deleteAddr(old.Ipv4, ifindex); err != nil {
			return fmt.Errorf("endpoint %d: %w", ifindex, err)
		}
	}
	return nil
}

// DeleteEndpoint removes the endpoint on hostIfindex; a missing one is not
// an error.
func (o *Objects) DeleteEndpoint(hostIfindex int) error {
	ifindex := uint32(hostIfindex)
	var old endpointEndpoint
	err := o.objs.Endpoints.Lookup(ifindex, &old)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete endpoint %d: look up: %w", ifindex, err)
	}
	// Silence it before making it unreachable, the reverse of PutEndpoint.
	if err := o.objs.Endpoints.Delete(ifindex); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete endpoint %d: %w", ifindex, err)
	}
	if err := o.deleteAddr(old.Ipv4, ifindex); err != nil {
		return fmt.Errorf("delete endpoint %d: %w", ifindex, err)
	}
	return nil
}

// deleteAddr removes addr from endpoint_by_ip if it still points at ifindex,
// so that removing a stale endpoint never unmaps an address that has moved.
func (o *Objects) deleteAddr(addr, ifindex uint32) error {
	var holder endpointEndpoint
	err := o.objs.EndpointByIp.Lookup(addr, &holder)
	if errors.Is(err, ebpf.ErrKeyNotExist) || (err == nil && holder.Ifindex != ifindex) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up address %s: %w", addrFromBE32(addr), err)
	}
	if err := o.objs.EndpointByIp.Delete(addr); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete address %s: %w", addrFromBE32(addr), err)
	}
	return nil
}
