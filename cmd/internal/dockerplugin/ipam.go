package dockerplugin

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
)

// Docker's IPAM calls come before the network is known by name: a pool is
// a subnet fabric checked (free, or exactly that of an existing network,
// which may be adopted), an address one fabric's pool does not use. The
// address is claimed for real when the container's namespace is connected.

const gatewayRequest = "com.docker.network.gateway"

func (p *Plugin) requestPool(req requestPoolRequest) (any, error) {
	if req.V6 {
		return nil, errors.New("fabric: IPv6 is not supported yet; create the network without --ipv6")
	}
	if len(req.Options) > 0 {
		keys := make([]string, 0, len(req.Options))
		for k := range req.Options {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		return nil, fmt.Errorf("fabric: unknown --ipam-opt %q (fabric's IPAM takes no options)", keys[0])
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var sub netip.Prefix
	if req.Pool == "" {
		if req.SubPool != "" {
			return nil, errors.New("fabric: --ip-range needs --subnet")
		}
		var avoid []netip.Prefix
		for _, pl := range p.st.Pools {
			if s, err := netip.ParsePrefix(pl.Subnet); err == nil {
				avoid = append(avoid, s)
			}
		}
		s, err := p.b.FreeSubnet(avoid)
		if err != nil {
			return nil, userErr(err)
		}
		sub = s
	} else {
		s, err := netip.ParsePrefix(req.Pool)
		if err != nil || !s.Addr().Is4() || s.Masked() != s {
			return nil, fmt.Errorf("fabric: --subnet %q is not an IPv4 network such as 10.10.0.0/24", req.Pool)
		}
		if err := p.b.CheckSubnet(s); err != nil {
			return nil, userErr(err)
		}
		for _, pl := range p.st.Pools {
			if o, err := netip.ParsePrefix(pl.Subnet); err == nil && o.Overlaps(s) {
				return nil, fmt.Errorf("fabric: subnet %s overlaps %s, the subnet of another Docker network", s, o)
			}
		}
		sub = s
	}
	pool := &poolRec{ID: sub.String(), Subnet: sub.String()}
	if req.SubPool != "" {
		r, err := netip.ParsePrefix(req.SubPool)
		if err != nil || r.Masked() != r || !sub.Contains(r.Addr()) || r.Bits() < sub.Bits() {
			return nil, fmt.Errorf("fabric: --ip-range %q is not a network inside --subnet %s", req.SubPool, sub)
		}
		pool.IPRange = r.String()
		pool.ID += "/" + r.String()
	}
	p.st.Pools[pool.ID] = pool
	if err := p.saveLocked(); err != nil {
		delete(p.st.Pools, pool.ID)
		return nil, err
	}
	return requestPoolResponse{PoolID: pool.ID, Pool: sub.String(), Data: map[string]string{}}, nil
}

func (p *Plugin) releasePool(req releasePoolRequest) (any, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.st.Pools[req.PoolID]; !ok {
		return struct{}{}, nil
	}
	delete(p.st.Pools, req.PoolID)
	return struct{}{}, p.saveLocked()
}

func (p *Plugin) requestAddress(req requestAddressRequest) (any, error) {
	p.mu.Lock()
	pool := p.st.Pools[req.PoolID]
	p.mu.Unlock()
	if pool == nil {
		return nil, fmt.Errorf("fabric: unknown address pool %q (create the network with --ipam-driver fabric)", req.PoolID)
	}
	sub := netip.MustParsePrefix(pool.Subnet)
	var want netip.Addr
	if req.Address != "" {
		a, err := netip.ParseAddr(req.Address)
		if err != nil || !sub.Contains(a) {
			return nil, fmt.Errorf("fabric: address %q is outside the network's subnet %s", req.Address, sub)
		}
		want = a
	}
	if req.Options["RequestAddressType"] == gatewayRequest {
		if !want.IsValid() {
			want = sub.Addr().Next()
		}
		p.mu.Lock()
		pool.Gateway = want.String()
		err := p.saveLocked()
		p.mu.Unlock()
		if err != nil {
			return nil, err
		}
		return requestAddressResponse{Address: netip.PrefixFrom(want, sub.Bits()).String()}, nil
	}
	p.mu.Lock()
	n := p.st.netByPool(pool)
	p.mu.Unlock()
	if n == nil {
		return nil, fmt.Errorf("fabric: no Docker network uses pool %s yet", pool.ID)
	}
	name, err := p.bind(n.ID)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if want.IsValid() {
		if p.pending[want] {
			return nil, fmt.Errorf("fabric: address %s is being given to another container", want)
		}
		if err := p.b.CheckAddress(name, want); err != nil {
			return nil, userErr(err)
		}
	} else {
		a, err := p.b.FreeAddress(name, p.pending)
		if err != nil {
			return nil, userErr(err)
		}
		want = a
	}
	p.pending[want] = true
	return requestAddressResponse{Address: netip.PrefixFrom(want, sub.Bits()).String()}, nil
}

func (p *Plugin) releaseAddress(req releaseAddressRequest) (any, error) {
	if a, err := netip.ParseAddr(req.Address); err == nil {
		p.mu.Lock()
		delete(p.pending, a)
		p.mu.Unlock()
	}
	return struct{}{}, nil
}
