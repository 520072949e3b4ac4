package dns

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
)

// A Record makes Name resolve to IP for sandboxes on Network. Sandbox is
// the sandbox the address belongs to, spelled as given to Attach; a
// sandbox has a record for its own name on each of its networks, which is
// also how the Table learns which networks a querier is on. Records from
// other hosts (overlay networks) carry the remote sandbox's name.
type Record struct {
	Name    string // sandbox name, alias or endpoint name; case and a trailing dot are ignored
	Network string
	IP      netip.Addr
	Sandbox string
}

// entry is a normalised Record.
type entry struct {
	name    string
	network string
	sandbox string
	ip      netip.Addr
	netIP   net.IP // ip as the miekg/dns A/AAAA records want it, shared read-only
}

// Table is an immutable snapshot of the records, indexed for the query
// path. It is cheap to build; the agent builds a new one on every change.
// A nil *Table is an empty table.
type Table struct {
	byName  map[string][]entry
	byAddr  map[netip.Addr][]entry
	nets    map[string][]string // sandbox -> networks it has records on
	records int
	turn    atomic.Uint32 // round-robin counter
}

// NewTable indexes records. Records without a name or a valid address are
// dropped; duplicates (same name, network and address) are kept once.
func NewTable(records []Record) *Table {
	t := &Table{
		byName: make(map[string][]entry, len(records)),
		byAddr: make(map[netip.Addr][]entry, len(records)),
		nets:   make(map[string][]string),
	}
	type key struct {
		name, network string
		ip            netip.Addr
	}
	seen := make(map[key]struct{}, len(records))
	for _, r := range records {
		name := normName(r.Name)
		ip := r.IP.Unmap()
		if name == "" || !ip.IsValid() {
			continue
		}
		k := key{name, r.Network, ip}
		if _, dup := seen[k]; dup {
			continue
		}
		seen[k] = struct{}{}
		e := entry{name: name, network: r.Network, sandbox: r.Sandbox, ip: ip, netIP: net.IP(ip.AsSlice())}
		t.byName[name] = append(t.byName[name], e)
		t.byAddr[ip] = append(t.byAddr[ip], e)
		if r.Sandbox != "" && !slices.Contains(t.nets[r.Sandbox], r.Network) {
			t.nets[r.Sandbox] = append(t.nets[r.Sandbox], r.Network)
		}
		t.records++
	}
	return t
}

// Len returns the number of records in the table.
func (t *Table) Len() int {
	if t == nil {
		return 0
	}
	return t.records
}

// Lookup returns the addresses name resolves to for the querier sandbox:
// those of records on a network the querier is also on, rotated on every
// call so that several targets of one alias share the load.
func (t *Table) Lookup(querier, name string) []netip.Addr {
	var buf [8]netip.Addr
	addrs, _, _ := t.lookup(buf[:0], nil, querier, name)
	if len(addrs) == 0 {
		return nil
	}
	return slices.Clone(addrs)
}

// lookup appends the in-scope addresses of name to addrs (and their net.IP
// forms to ips, if ips is not nil) without allocating for the common case
// of a few targets. known reports whether the name exists at all, in or
// out of the querier's scope.
func (t *Table) lookup(addrs []netip.Addr, ips []net.IP, querier, name string) (_ []netip.Addr, _ []net.IP, known bool) {
	if t == nil {
		return addrs, ips, false
	}
	entries, known := t.byName[normName(name)]
	if !known {
		return addrs, ips, false
	}
	nets := t.nets[querier]
	start := len(addrs)
	for i := range entries {
		e := &entries[i]
		if !slices.Contains(nets, e.network) || slices.Contains(addrs[start:], e.ip) {
			continue
		}
		addrs = append(addrs, e.ip)
		if ips != nil {
			ips = append(ips, e.netIP)
		}
	}
	if n := len(addrs) - start; n > 1 {
		k := int(t.turn.Add(1) % uint32(n))
		rotate(addrs[start:], k)
		if ips != nil {
			rotate(ips[len(ips)-n:], k)
		}
	}
	return addrs, ips, true
}

// Reverse returns the names (without trailing dot) that ip has on the
// networks the querier is on: the sandbox's own name first.
func (t *Table) Reverse(querier string, ip netip.Addr) []string {
	names, _ := t.reverse(querier, ip)
	return names
}

// reverse is Reverse plus whether ip is in the table at all.
func (t *Table) reverse(querier string, ip netip.Addr) (names []string, known bool) {
	if t == nil {
		return nil, false
	}
	entries, known := t.byAddr[ip.Unmap()]
	if !known {
		return nil, false
	}
	nets := t.nets[querier]
	for _, e := range entries {
		if !slices.Contains(nets, e.network) || slices.Contains(names, e.name) {
			continue
		}
		if e.name == normName(e.sandbox) {
			names = slices.Insert(names, 0, e.name)
			continue
		}
		names = append(names, e.name)
	}
	return names, true
}

// normName lower-cases name and drops one trailing dot; it does not
// allocate when the name is already lower case.
func normName(name string) string {
	name = strings.TrimSuffix(name, ".")
	for i := 0; i < len(name); i++ {
		if c := name[i]; c >= 'A' && c <= 'Z' || c >= 0x80 {
			return strings.ToLower(name)
		}
	}
	return name
}

// rotate moves s[k:] to the front, in place.
func rotate[T any](s []T, k int) {
	if k == 0 {
		return
	}
	slices.Reverse(s[:k])
	slices.Reverse(s[k:])
	slices.Reverse(s)
}
