package datapath

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
)

// Why FilterRemotes leaves a remote out (metric labels).
const (
	SkipAddress   = "address"    // not a host address of the subnet, or the gateway
	SkipMAC       = "mac"        // not a 6-byte unicast, non-zero MAC
	SkipNode      = "node"       // not a unicast IPv4 address, or this host
	SkipDuplicate = "duplicate"  // the address is listed before, differently
	SkipSharedMAC = "shared-mac" // the MAC is listed before, on another node
)

// SkippedRemote is a remote FilterRemotes left out, and why.
type SkippedRemote struct {
	Remote Remote
	Reason string // Skip*
}

func (s SkippedRemote) String() string {
	return fmt.Sprintf("%s (MAC %s, node %s): %s", s.Remote.Addr, net.HardwareAddr(s.Remote.MAC), s.Remote.Node, s.Reason)
}

// FilterRemotes keeps the remotes of overlay network n a datapath can
// program and says why it left each other one out: one bad entry (a
// duplicate after a partition, a multicast MAC, a node that is this host,
// self) must not stop the whole network's updates. Of two entries for one
// address, or one MAC on two nodes, the first wins, so the caller lists
// the one it trusts (the lease holder's) first; exact repeats are merged
// silently.
func FilterRemotes(n Network, self netip.Addr, remotes []Remote) (keep []Remote, skipped []SkippedRemote) {
	byAddr := make(map[netip.Addr]Remote, len(remotes))
	macNode := make(map[string]netip.Addr, len(remotes))
	bcast := broadcastOf(n.Subnet)
	for _, r := range remotes {
		why := ""
		switch {
		case !r.Addr.Is4() || !n.Subnet.Contains(r.Addr) || r.Addr == n.Gateway ||
			r.Addr == n.Subnet.Masked().Addr() || r.Addr == bcast:
			why = SkipAddress
		case len(r.MAC) != 6 || r.MAC[0]&1 != 0 || [6]byte(r.MAC) == [6]byte{}:
			why = SkipMAC
		case !r.Node.Is4() || r.Node.IsUnspecified() || r.Node.IsMulticast() || r.Node.IsLoopback() ||
			r.Node == netip.AddrFrom4([4]byte{255, 255, 255, 255}) || r.Node == self:
			why = SkipNode
		}
		if why == "" {
			if old, ok := byAddr[r.Addr]; ok {
				if old.Node == r.Node && net.HardwareAddr(old.MAC).String() == net.HardwareAddr(r.MAC).String() {
					continue
				}
				why = SkipDuplicate
			} else if node, ok := macNode[string(r.MAC)]; ok && node != r.Node {
				why = SkipSharedMAC
			}
		}
		if why != "" {
			skipped = append(skipped, SkippedRemote{Remote: r, Reason: why})
			continue
		}
		byAddr[r.Addr] = r
		macNode[string(r.MAC)] = r.Node
		keep = append(keep, r)
	}
	return keep, skipped
}

// broadcastOf is the subnet's broadcast address (IPv4; /31 and /32 have
// none, and the zero Addr is returned).
func broadcastOf(p netip.Prefix) netip.Addr {
	if !p.Addr().Is4() || p.Bits() >= 31 {
		return netip.Addr{}
	}
	b := p.Masked().Addr().As4()
	host := ^uint32(0) >> p.Bits()
	for i := range 4 {
		b[i] |= byte(host >> (24 - 8*i))
	}
	return netip.AddrFrom4(b)
}

// SkipLog remembers which remotes a datapath skipped, so that each is
// logged once (SetRemotes runs again and again with the same list) and
// counted once per time it appears.
type SkipLog struct {
	mu     sync.Mutex
	seen   map[string]map[string]bool // network ID -> skipped entry -> still skipped
	counts map[string]uint64          // by reason
}

// Note records the skipped remotes of network id as of now: new ones are
// logged and counted; ones no longer skipped are forgotten, so that they
// are logged again if they come back.
func (l *SkipLog) Note(log *slog.Logger, id string, skipped []SkippedRemote) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen == nil {
		l.seen, l.counts = map[string]map[string]bool{}, map[string]uint64{}
	}
	old := l.seen[id]
	now := make(map[string]bool, len(skipped))
	for _, s := range skipped {
		k := s.String()
		now[k] = true
		if old[k] {
			continue
		}
		l.counts[s.Reason]++
		if log != nil {
			log.Warn("skipping unusable remote endpoint of overlay network", "network", id, "remote", s.Remote.Addr,
				"mac", net.HardwareAddr(s.Remote.MAC).String(), "node", s.Remote.Node, "reason", s.Reason)
		}
	}
	if len(now) == 0 {
		delete(l.seen, id)
		return
	}
	l.seen[id] = now
}

// Forget drops network id's entries (the network is gone).
func (l *SkipLog) Forget(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.seen, id)
}

// Counts is how many skips were noted, by reason.
func (l *SkipLog) Counts() map[string]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]uint64, len(l.counts))
	for k, v := range l.counts {
		out[k] = v
	}
	return out
}
