//go:build linux

package bpf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
)

// MaxVNI is the largest VXLAN network identifier (24 bits).
const MaxVNI = 1<<24 - 1

// Remote is an endpoint of an overlay network that lives on another node:
// the programs tunnel its network's traffic for Addr to Node.
type Remote struct {
	Network NetID
	Addr    netip.Addr       // the endpoint's IPv4 address, in its network's subnet
	MAC     net.HardwareAddr // its sandbox-side MAC
	Node    netip.Addr       // its node's underlay IPv4 address
}

func (r Remote) key() (endpointRemoteKey, error) {
	if r.Network == 0 {
		return endpointRemoteKey{}, fmt.Errorf("remote %s: network id 0: %w", r.Addr, ErrInvalid)
	}
	if !r.Addr.Is4() || r.Addr.IsUnspecified() {
		return endpointRemoteKey{}, fmt.Errorf("remote address %s is not a usable IPv4 address: %w", r.Addr, ErrInvalid)
	}
	return endpointRemoteKey{NetworkId: uint32(r.Network), Ipv4: be32(r.Addr)}, nil
}

// PutRemote creates or replaces a remote endpoint. Its network must have
// been put as an overlay network (VNI set) whose subnet holds the address.
func (o *Objects) PutRemote(r Remote) error {
	k, err := r.key()
	if err != nil {
		return err
	}
	if !r.Node.Is4() || r.Node.IsUnspecified() || r.Node.IsMulticast() || r.Node.IsLoopback() {
		return fmt.Errorf("remote %s: node %s is not a unicast IPv4 address: %w", r.Addr, r.Node, ErrInvalid)
	}
	if err := o.checkHost("remote "+r.Addr.String(), r.Network, r.Addr, r.MAC, true); err != nil {
		return err
	}
	v := endpointRemote{Node: be32(r.Node), Mac: [6]byte(r.MAC)}
	if err := o.objs.Remotes.Put(k, v); err != nil {
		return fmt.Errorf("put remote %s of network %d: %w", r.Addr, r.Network, err)
	}
	return nil
}

// DeleteRemote removes a remote endpoint; a missing one is not an error.
func (o *Objects) DeleteRemote(id NetID, addr netip.Addr) error {
	k, err := Remote{Network: id, Addr: addr}.key()
	if err != nil {
		return err
	}
	if err := o.objs.Remotes.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete remote %s of network %d: %w", addr, id, err)
	}
	return nil
}

// Remotes lists every remote endpoint the map holds, of all networks.
func (o *Objects) Remotes() ([]Remote, error) {
	return collect(o.objs.Remotes, "remotes", func(k endpointRemoteKey, v endpointRemote) Remote {
		return Remote{
			Network: NetID(k.NetworkId),
			Addr:    addrFromBE32(k.Ipv4),
			MAC:     net.HardwareAddr(append([]byte(nil), v.Mac[:]...)),
			Node:    addrFromBE32(v.Node),
		}
	})
}
