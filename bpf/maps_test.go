//go:build linux

package bpf

import (
	"errors"
	"net"
	"net/netip"
	"testing"
)

func TestPutNetworkRejects(t *testing.T) {
	o := load(t)
	with := func(f func(*Network)) Network { n := netA; f(&n); return n }
	for name, n := range map[string]Network{
		"id 0":               with(func(n *Network) { n.ID = 0 }),
		"no subnet":          with(func(n *Network) { n.Subnet = netip.Prefix{} }),
		"IPv6 subnet":        with(func(n *Network) { n.Subnet = pfx("fd00::/64"); n.Gateway = ip("fd00::1") }),
		"gateway off subnet": with(func(n *Network) { n.Gateway = ip("10.9.0.1") }),
		"short MAC":          with(func(n *Network) { n.RouterMAC = net.HardwareAddr{2, 0, 0} }),
		"multicast MAC":      with(func(n *Network) { n.RouterMAC = mac("01:00:5e:00:00:01") }),
		"zero MAC":           with(func(n *Network) { n.RouterMAC = zeroMAC }),
	} {
		if err := o.PutNetwork(n); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err %v, want ErrInvalid", name, err)
		}
	}
	if err := o.PutNetwork(netA); err != nil {
		t.Fatalf("control: %v", err)
	}
}

func TestNetworkRoundTrip(t *testing.T) {
	o := load(t)
	n := Network{ID: 9, Subnet: pfx("172.30.128.0/17"), Gateway: ip("172.30.255.254"), RouterMAC: mac("02:fa:00:00:00:09"), VNI: 0x010203}
	if err := o.PutNetwork(n); err != nil {
		t.Fatal(err)
	}
	got, ok, err := o.network(9)
	if err != nil || !ok {
		t.Fatalf("network 9: ok %v, err %v", ok, err)
	}
	if got.Subnet != n.Subnet || got.Gateway != n.Gateway || got.RouterMAC.String() != n.RouterMAC.String() || got.VNI != n.VNI {
		t.Errorf("got %+v, want %+v", got, n)
	}
	// The programs compare raw packet bytes against these fields.
	// The VNI is host order, as bpf_skb_set_tunnel_key takes it.
	raw := make([]byte, 24)
	if err := o.objs.Networks.Lookup(uint32(9), raw); err != nil {
		t.Fatal(err)
	}
	want := []byte{172, 30, 255, 254, 172, 30, 128, 0, 255, 255, 128, 0, 2, 0xfa, 0, 0, 0, 9, 0, 0, 3, 2, 1, 0}
	if string(raw) != string(want) {
		t.Errorf("raw value %v, want %v", raw, want)
	}
}

func TestPutEndpointRejects(t *testing.T) {
	o := loadFixture(t)
	with := func(f func(*Endpoint)) Endpoint {
		ep := Endpoint{HostIfindex: 150, Addr: ip("10.1.0.50"), MAC: mac("02:00:00:00:00:50"), Network: 1}
		f(&ep)
		return ep
	}
	for name, ep := range map[string]Endpoint{
		"ifindex 0":          with(func(ep *Endpoint) { ep.HostIfindex = 0 }),
		"IPv6 address":       with(func(ep *Endpoint) { ep.Addr = ip("fd00::2") }),
		"unspecified":        with(func(ep *Endpoint) { ep.Addr = ip("0.0.0.0") }),
		"zero MAC":           with(func(ep *Endpoint) { ep.MAC = zeroMAC }),
		"broadcast MAC":      with(func(ep *Endpoint) { ep.MAC = broadcast }),
		"unknown network":    with(func(ep *Endpoint) { ep.Network = 77 }),
		"outside its subnet": with(func(ep *Endpoint) { ep.Addr = ip("10.2.0.50") }),
		"the gateway":        with(func(ep *Endpoint) { ep.Addr = netA.Gateway }),
	} {
		if err := o.PutEndpoint(ep); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err %v, want ErrInvalid", name, err)
		}
	}
	if err := o.PutEndpoint(with(func(*Endpoint) {})); err != nil {
		t.Fatalf("control: %v", err)
	}
}

func TestPutEndpointIsIdempotent(t *testing.T) {
	o := loadFixture(t)
	for range 2 {
		if err := o.PutEndpoint(a1); err != nil {
			t.Fatal(err)
		}
	}
	runCounted(t, o, a2.HostIfindex, ipFrom(a2, netA, ipv4Hdr{src: a2.Addr, dst: a1.Addr, proto: protoICMP}, icmpEcho(1, 1, nil)),
		tcActRedirect, ReasonForward)
}

func TestAddressConflict(t *testing.T) {
	o := loadFixture(t)
	thief := Endpoint{HostIfindex: 999, Addr: a1.Addr, MAC: mac("02:00:00:00:09:99"), Network: 1}
	if err := o.PutEndpoint(thief); !errors.Is(err, ErrConflict) {
		t.Fatalf("err %v, want ErrConflict", err)
	}
	ping := ipFrom(a2, netA, ipv4Hdr{src: a2.Addr, dst: a1.Addr, proto: protoICMP}, icmpEcho(1, 1, nil))
	out := runCounted(t, o, a2.HostIfindex, ping, tcActRedirect, ReasonForward)
	if got := net.HardwareAddr(out[0:6]); got.String() != a1.MAC.String() {
		t.Errorf("forwarded to %s, want the original holder %s", got, a1.MAC)
	}
	runCounted(t, o, thief.HostIfindex, ipFrom(thief, netA, ipv4Hdr{src: thief.Addr, dst: a2.Addr, proto: protoICMP}, icmpEcho(1, 1, nil)),
		tcActShot, ReasonNoEndpoint)
}

func TestReaddressEndpoint(t *testing.T) {
	o := loadFixture(t)
	moved := a1
	moved.Addr = ip("10.1.0.50")
	if err := o.PutEndpoint(moved); err != nil {
		t.Fatal(err)
	}
	toOld := ipFrom(a2, netA, ipv4Hdr{src: a2.Addr, dst: a1.Addr, proto: protoICMP}, icmpEcho(1, 1, nil))
	toNew := ipFrom(a2, netA, ipv4Hdr{src: a2.Addr, dst: moved.Addr, proto: protoICMP}, icmpEcho(1, 1, nil))
	runCounted(t, o, a2.HostIfindex, toOld, tcActOK, ReasonToHost)
	runCounted(t, o, a2.HostIfindex, toNew, tcActRedirect, ReasonForward)
	fromOld := ipFrom(a1, netA, ipv4Hdr{src: a1.Addr, dst: a2.Addr, proto: protoICMP}, icmpEcho(1, 1, nil))
	fromNew := ipFrom(a1, netA, ipv4Hdr{src: moved.Addr, dst: a2.Addr, proto: protoICMP}, icmpEcho(1, 1, nil))
	runCounted(t, o, a1.HostIfindex, fromOld, tcActShot, ReasonSpoofedIP)
	runCounted(t, o, a1.HostIfindex, fromNew, tcActRedirect, ReasonForward)
	// The old address is free for another endpoint now.
	if err := o.PutEndpoint(Endpoint{HostIfindex: 150, Addr: a1.Addr, MAC: mac("02:00:00:00:01:50"), Network: 1}); err != nil {
		t.Fatalf("reuse old address: %v", err)
	}
}

func TestDeleteEndpoint(t *testing.T) {
	o := loadFixture(t)
	for range 2 { // deleting a missing endpoint is not an error
		if err := o.DeleteEndpoint(a2.HostIfindex); err != nil {
			t.Fatal(err)
		}
	}
	runCounted(t, o, a2.HostIfindex, ipFrom(a2, netA, ipv4Hdr{src: a2.Addr, dst: a1.Addr, proto: protoICMP}, icmpEcho(1, 1, nil)),
		tcActShot, ReasonNoEndpoint)
	runCounted(t, o, a1.HostIfindex, ipFrom(a1, netA, ipv4Hdr{src: a1.Addr, dst: a2.Addr, proto: protoICMP}, icmpEcho(1, 1, nil)),
		tcActOK, ReasonToHost)
	if err := o.DeleteNetwork(77); err != nil {
		t.Errorf("delete missing network: %v", err)
	}
}

// TestDeleteKeepsMovedAddress: if the address map already points elsewhere
// (e.g. maps left half-updated by a crash), deleting the stale endpoint must
// not unmap the address from its new holder.
func TestDeleteKeepsMovedAddress(t *testing.T) {
	o := loadFixture(t)
	newHolder := endpointEndpoint{Ifindex: 555, Ipv4: be32(a1.Addr), Mac: [6]byte(mac("02:00:00:00:05:55")), NetworkId: 1}
	if err := o.objs.EndpointByIp.Put(be32(a1.Addr), newHolder); err != nil {
		t.Fatal(err)
	}
	if err := o.DeleteEndpoint(a1.HostIfindex); err != nil {
		t.Fatal(err)
	}
	var got endpointEndpoint
	if err := o.objs.EndpointByIp.Lookup(be32(a1.Addr), &got); err != nil || got != newHolder {
		t.Errorf("address entry %+v (err %v), want the new holder %+v", got, err, newHolder)
	}
}
