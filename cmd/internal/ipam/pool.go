package ipam

import (
	"fmt"
	"math/bits"
	"net/netip"
	"sync"
)

// Pool tracks the addresses of one network: which are reserved (network,
// broadcast, gateway, excluded), which are assigned and to whom, and where
// the next dynamic allocation starts.
//
// A Pool is safe for concurrent use. The agent still serialises the
// changes to a network under its own lock (an address is allocated, then
// stored, then programmed); the pool's lock lets status and metrics read
// Used and Free without waiting for that lock, which a change holds
// across datapath and cluster calls.
//
// Dynamic allocation is next-fit, like Docker's: it continues after the
// last allocated address and wraps around, so an address that was just
// released is not handed to the next container while stale ARP entries or
// connections may still point at it. Free addresses are found through a
// bitmap of the ip-range, 64 addresses per word, so allocating thousands
// of addresses in a /16 stays cheap.
type Pool struct {
	mu      sync.Mutex // guards owners, taken, usedIn and next
	subnet  netip.Prefix
	gateway netip.Addr
	ipRange netip.Prefix
	exclude map[netip.Addr]struct{}

	owners map[netip.Addr]string // every assigned address, dynamic or static

	// The bitmap covers the ip-range only: bit i is set when the address
	// rangeBase+i is reserved or assigned. Bits past rangeLen are set so the
	// search never returns them.
	rangeBase uint32
	rangeLen  uint32
	taken     []uint64
	reserved  int    // reserved addresses inside the range
	usedIn    int    // assigned addresses inside the range
	next      uint32 // offset where the next dynamic search starts
}

// NewPool returns the pool of a network. subnet and gateway follow
// ValidateNetwork; a zero gateway means DefaultGateway(subnet). A zero
// ipRange means the whole subnet. exclude lists further addresses that must
// never be assigned (Docker's auxiliary addresses); each must be inside
// the subnet.
func NewPool(subnet netip.Prefix, gateway netip.Addr, ipRange netip.Prefix, exclude []netip.Addr) (*Pool, error) {
	if err := ValidateNetwork(subnet, gateway, ipRange); err != nil {
		return nil, err
	}
	if !gateway.IsValid() {
		gateway = DefaultGateway(subnet)
	}
	if !ipRange.IsValid() {
		ipRange = subnet
	}
	p := &Pool{
		subnet:    subnet,
		gateway:   gateway,
		ipRange:   ipRange,
		exclude:   make(map[netip.Addr]struct{}, len(exclude)),
		owners:    make(map[netip.Addr]string),
		rangeBase: addrToU32(ipRange.Addr()),
		rangeLen:  hostMask(ipRange) + 1,
	}
	for _, a := range exclude {
		if !a.Is4() || !subnet.Contains(a) {
			return nil, fmt.Errorf("%w: excluded address %s is outside subnet %s", ErrInvalidNetwork, a, subnet)
		}
		p.exclude[a] = struct{}{}
	}

	words := (uint64(p.rangeLen) + 63) / 64
	p.taken = make([]uint64, words)
	if tail := p.rangeLen % 64; tail != 0 {
		p.taken[words-1] = ^uint64(0) << tail
	}
	p.reserveInRange(networkAddr(subnet))
	p.reserveInRange(broadcastAddr(subnet))
	p.reserveInRange(gateway)
	for a := range p.exclude {
		p.reserveInRange(a)
	}
	return p, nil
}

func (p *Pool) reserveInRange(a netip.Addr) {
	off, ok := p.offset(a)
	if !ok || p.isSet(off) {
		return
	}
	p.set(off)
	p.reserved++
}

// Subnet returns the network's subnet.
func (p *Pool) Subnet() netip.Prefix { return p.subnet }

// Gateway returns the gateway address (defaulted if none was given).
func (p *Pool) Gateway() netip.Addr { return p.gateway }

// Range returns the prefix dynamic addresses are drawn from (the subnet
// when no ip-range was given).
func (p *Pool) Range() netip.Prefix { return p.ipRange }

// String names the pool in messages: "10.0.0.0/24" or
// "10.0.0.0/24 (ip-range 10.0.0.128/25)".
func (p *Pool) String() string {
	if p.ipRange == p.subnet {
		return p.subnet.String()
	}
	return fmt.Sprintf("%s (ip-range %s)", p.subnet, p.ipRange)
}

// Allocate assigns the next free address of the ip-range to owner.
func (p *Pool) Allocate(owner string) (netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	off, ok := p.findFree(p.next, p.rangeLen)
	if !ok {
		off, ok = p.findFree(0, p.next)
	}
	if !ok {
		return netip.Addr{}, fmt.Errorf("%w: pool %s has no free address (all %d assignable addresses in use); use a larger subnet or ip-range",
			ErrExhausted, p, p.Size())
	}
	p.set(off)
	p.usedIn++
	p.next = (off + 1) % p.rangeLen
	a := u32ToAddr(p.rangeBase + off)
	p.owners[a] = owner
	return a, nil
}

// Claim assigns a specific address to owner. Unlike Allocate it accepts any
// usable address of the subnet, also outside the ip-range, as Docker does
// for --ip.
func (p *Pool) Claim(ip netip.Addr, owner string) error {
	if !ip.Is4() || !p.subnet.Contains(ip) {
		return fmt.Errorf("%w: %s is not in subnet %s", ErrOutOfSubnet, ip, p.subnet)
	}
	if why := p.reservedReason(ip); why != "" {
		return fmt.Errorf("%w: %s is the %s of %s", ErrReserved, ip, why, p.subnet)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if cur, ok := p.owners[ip]; ok {
		return fmt.Errorf("%w: %s is already assigned to %q", ErrInUse, ip, cur)
	}
	p.owners[ip] = owner
	if off, ok := p.offset(ip); ok {
		p.set(off)
		p.usedIn++
	}
	return nil
}

// Release frees an assigned address. Releasing an address that is not
// assigned (or is reserved) does nothing, so cleanup paths can call it
// unconditionally.
func (p *Pool) Release(ip netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.owners[ip]; !ok {
		return
	}
	delete(p.owners, ip)
	if off, ok := p.offset(ip); ok {
		p.clear(off)
		p.usedIn--
	}
}

// Owner returns who an address is assigned to.
func (p *Pool) Owner(ip netip.Addr) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	o, ok := p.owners[ip]
	return o, ok
}

// Used returns the number of assigned addresses, dynamic and static.
func (p *Pool) Used() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.owners)
}

// Size returns how many addresses of the ip-range can be assigned
// dynamically: the range minus the network, broadcast, gateway and
// excluded addresses that fall inside it.
func (p *Pool) Size() int { return int(p.rangeLen) - p.reserved }

// Free returns how many addresses Allocate can still hand out. Static
// claims inside the ip-range count against it; claims outside do not.
func (p *Pool) Free() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.Size() - p.usedIn
}

func (p *Pool) reservedReason(ip netip.Addr) string {
	switch ip {
	case networkAddr(p.subnet):
		return "network address"
	case broadcastAddr(p.subnet):
		return "broadcast address"
	case p.gateway:
		return "gateway"
	}
	if _, ok := p.exclude[ip]; ok {
		return "excluded address"
	}
	return ""
}

// offset returns a's position in the ip-range.
func (p *Pool) offset(a netip.Addr) (uint32, bool) {
	if !a.Is4() || !p.ipRange.Contains(a) {
		return 0, false
	}
	return addrToU32(a) - p.rangeBase, true
}

func (p *Pool) isSet(off uint32) bool { return p.taken[off/64]&(1<<(off%64)) != 0 }
func (p *Pool) set(off uint32)        { p.taken[off/64] |= 1 << (off % 64) }
func (p *Pool) clear(off uint32)      { p.taken[off/64] &^= 1 << (off % 64) }

// findFree returns the lowest clear bit in [from, to).
func (p *Pool) findFree(from, to uint32) (uint32, bool) {
	if from >= to {
		return 0, false
	}
	w := from / 64
	word := p.taken[w] | (1<<(from%64) - 1) // ignore bits below from
	for {
		if free := ^word; free != 0 {
			off := w*64 + uint32(bits.TrailingZeros64(free))
			if off >= to {
				return 0, false
			}
			return off, true
		}
		w++
		if uint64(w)*64 >= uint64(to) {
			return 0, false
		}
		word = p.taken[w]
	}
}
