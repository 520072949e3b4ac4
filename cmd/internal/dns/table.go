package dns

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
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
	owner   string // who set it (Table.Set); "" for NewTable's records
	ip      netip.Addr
	netIP   net.IP // ip as the miekg/dns A/AAAA records want it, shared read-only
}

// sandboxNet is one (sandbox, network) pair a sandbox has records on.
type sandboxNet struct{ sandbox, network string }

// Table holds the records, indexed for the query path. NewTable builds one
// from a full list; Set then replaces the records of one owner (the agent
// uses an endpoint or a network as owner), so a change costs what the
// owner's records cost, not a rebuild of every record on the host. Queries
// take a read lock. A nil *Table is an empty table.
type Table struct {
	mu      sync.RWMutex
	byName  map[string][]entry
	byAddr  map[netip.Addr][]entry
	nets    map[string][]string // sandbox -> networks it has records on
	netRefs map[sandboxNet]int  // records behind each nets entry
	owners  map[string][]entry  // owner -> its records
	records int
	turn    atomic.Uint32 // round-robin counter
}

// NewTable indexes records. Records without a valid name (one DNS label,
// see ValidLabel) or a valid address are dropped; duplicates (same name, network and address) are kept once.
func NewTable(records []Record) *Table {
	t := &Table{
		byName:  make(map[string][]entry, len(records)),
		byAddr:  make(map[netip.Addr][]entry, len(records)),
		nets:    make(map[string][]string),
		netRefs: make(map[sandboxNet]int),
		owners:  make(map[string][]entry),
	}
	t.add("", records)
	return t
}

// Set replaces the records of owner with records (none: removes them),
// with NewTable's rules for bad records and duplicates within the owner's
// records. Queries see the owner's old records or its new ones, never a
// mix.
func (t *Table) Set(owner string, records []Record) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.remove(owner)
	t.add(owner, records)
}

// add indexes records under owner, which has none yet. Callers hold mu
// (or own t exclusively).
func (t *Table) add(owner string, records []Record) {
	added := make([]entry, 0, len(records))
	for _, r := range records {
		name := normName(r.Name)
		ip := r.IP.Unmap()
		if ValidLabel(name) != nil || !ip.IsValid() {
			continue
		}
		added = append(added, entry{name: name, network: r.Network, sandbox: r.Sandbox, owner: owner, ip: ip, netIP: net.IP(ip.AsSlice())})
	}
	added = dedup(added)
	for _, e := range added {
		t.byName[e.name] = append(t.byName[e.name], e)
		t.byAddr[e.ip] = append(t.byAddr[e.ip], e)
		if e.sandbox != "" {
			k := sandboxNet{e.sandbox, e.network}
			if t.netRefs[k] == 0 {
				t.nets[e.sandbox] = append(t.nets[e.sandbox], e.network)
			}
			t.netRefs[k]++
		}
	}
	if len(added) > 0 {
		t.owners[owner] = added
	}
	t.records += len(added)
}

// dedup keeps the first of entries with the same name, network and
// address, in order.
func dedup(es []entry) []entry {
	type key struct {
		name, network string
		ip            netip.Addr
	}
	seen := make(map[key]struct{}, len(es))
	out := es[:0]
	for _, e := range es {
		k := key{e.name, e.network, e.ip}
		if _, dup := seen[k]; !dup {
			seen[k] = struct{}{}
			out = append(out, e)
		}
	}
	return out
}

// remove drops the records of owner. Callers hold mu.
func (t *Table) remove(owner string) {
	old := t.owners[owner]
	if len(old) == 0 {
		return
	}
	delete(t.owners, owner)
	mine := func(e entry) bool { return e.owner == owner }
	for _, e := range old {
		if l := slices.DeleteFunc(t.byName[e.name], mine); len(l) > 0 {
			t.byName[e.name] = l
		} else {
			delete(t.byName, e.name)
		}
		if l := slices.DeleteFunc(t.byAddr[e.ip], mine); len(l) > 0 {
			t.byAddr[e.ip] = l
		} else {
			delete(t.byAddr, e.ip)
		}
		if e.sandbox == "" {
			continue
		}
		k := sandboxNet{e.sandbox, e.network}
		if t.netRefs[k]--; t.netRefs[k] > 0 {
			continue
		}
		delete(t.netRefs, k)
		if l := slices.DeleteFunc(t.nets[e.sandbox], func(n string) bool { return n == e.network }); len(l) > 0 {
			t.nets[e.sandbox] = l
		} else {
			delete(t.nets, e.sandbox)
		}
	}
	t.records -= len(old)
}

// Len returns the number of records in the table.
func (t *Table) Len() int {
	if t == nil {
		return 0
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
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
	t.mu.RLock()
	defer t.mu.RUnlock()
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
	t.mu.RLock()
	defer t.mu.RUnlock()
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

// ValidLabel checks that name is one DNS label (a trailing dot allowed):
// 1 to 63 letters, digits, '-' or '_', not starting or ending with '-'.
// Sandbox names and aliases are single labels so that no sandbox can
// claim a name of the outside world (an alias github.com).
func ValidLabel(name string) error {
	name = strings.TrimSuffix(name, ".")
	if name == "" || len(name) > 63 {
		return fmt.Errorf("DNS name %q must be 1 to 63 characters", name)
	}
	if strings.Contains(name, ".") {
		return fmt.Errorf("DNS name %q must be a single label, without '.'", name)
	}
	if name[0] == '-' || name[len(name)-1] == '-' {
		return fmt.Errorf("DNS name %q must not start or end with '-'", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("DNS name %q may contain only letters, digits, '-' and '_'", name)
		}
	}
	return nil
}
