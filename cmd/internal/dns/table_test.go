package dns

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

var ip = netip.MustParseAddr

// twoNetworks: front and back networks; "web" is on both, "db" only on
// back, "ui" only on front; "api" and "api2" share the alias "api".
func twoNetworks() []Record {
	return []Record{
		{Name: "web", Network: "front", IP: ip("10.1.0.2"), Sandbox: "web"},
		{Name: "web", Network: "back", IP: ip("10.2.0.2"), Sandbox: "web"},
		{Name: "ui", Network: "front", IP: ip("10.1.0.3"), Sandbox: "ui"},
		{Name: "db", Network: "back", IP: ip("10.2.0.4"), Sandbox: "db"},
		{Name: "database", Network: "back", IP: ip("10.2.0.4"), Sandbox: "db"}, // alias
		{Name: "api1", Network: "back", IP: ip("10.2.0.5"), Sandbox: "api1"},
		{Name: "api", Network: "back", IP: ip("10.2.0.5"), Sandbox: "api1"},
		{Name: "api2", Network: "back", IP: ip("10.2.0.6"), Sandbox: "api2"},
		{Name: "api", Network: "back", IP: ip("10.2.0.6"), Sandbox: "api2"},
	}
}

func sorted(a []netip.Addr) []netip.Addr {
	a = slices.Clone(a)
	slices.SortFunc(a, netip.Addr.Compare)
	return a
}

func TestLookupScope(t *testing.T) {
	tb := NewTable(twoNetworks())
	for _, tc := range []struct {
		querier, name string
		want          []netip.Addr
	}{
		{"ui", "web", []netip.Addr{ip("10.1.0.2")}},       // shared network front: front address
		{"db", "web", []netip.Addr{ip("10.2.0.2")}},       // shared network back: back address
		{"web", "ui", []netip.Addr{ip("10.1.0.3")}},       // web is on both: sees ui
		{"web", "db", []netip.Addr{ip("10.2.0.4")}},       // ... and db
		{"web", "database", []netip.Addr{ip("10.2.0.4")}}, // ... and db's alias
		{"ui", "db", nil}, // no shared network
		{"db", "ui", nil},
		{"ui", "database", nil},
		{"web", "web", []netip.Addr{ip("10.1.0.2"), ip("10.2.0.2")}}, // itself, on both
		{"nobody", "web", nil}, // unknown querier sees nothing
		{"web", "nosuch", nil},
	} {
		got := sorted(tb.Lookup(tc.querier, tc.name))
		if !slices.Equal(got, sorted(tc.want)) {
			t.Errorf("Lookup(%q, %q) = %v, want %v", tc.querier, tc.name, got, tc.want)
		}
	}
}

func TestLookupKnown(t *testing.T) {
	tb := NewTable(twoNetworks())
	if _, _, known := tb.lookup(nil, nil, "ui", "db"); !known {
		t.Error("db out of scope should still be known (NXDOMAIN, not forwarded)")
	}
	if _, _, known := tb.lookup(nil, nil, "ui", "example.com"); known {
		t.Error("example.com should be unknown (forwarded)")
	}
	var nilTable *Table
	if got := nilTable.Lookup("a", "b"); got != nil || nilTable.Len() != 0 {
		t.Errorf("nil table: %v, %d", got, nilTable.Len())
	}
}

func TestLookupAliasRoundRobin(t *testing.T) {
	tb := NewTable(twoNetworks())
	want := []netip.Addr{ip("10.2.0.5"), ip("10.2.0.6")}
	firsts := map[netip.Addr]int{}
	for range 10 {
		got := tb.Lookup("db", "api")
		if !slices.Equal(sorted(got), want) {
			t.Fatalf("Lookup(db, api) = %v, want all of %v", got, want)
		}
		firsts[got[0]]++
	}
	if firsts[want[0]] != 5 || firsts[want[1]] != 5 {
		t.Errorf("first address over 10 queries: %v, want each 5 times", firsts)
	}
}

func TestLookupRotationMany(t *testing.T) {
	var recs []Record
	for i := range 12 { // more than the lookup's stack buffer
		a := netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 2)})
		name := "w" + string(rune('a'+i))
		recs = append(recs, Record{Name: name, Network: "n", IP: a, Sandbox: name}, Record{Name: "pool", Network: "n", IP: a, Sandbox: name})
	}
	tb := NewTable(recs)
	seen := map[netip.Addr]bool{}
	for range 12 {
		got := tb.Lookup("wa", "pool")
		if len(got) != 12 {
			t.Fatalf("got %d addresses, want 12", len(got))
		}
		seen[got[0]] = true
	}
	if len(seen) != 12 {
		t.Errorf("12 queries put %d different addresses first, want 12", len(seen))
	}
}

func TestLookupCaseAndDot(t *testing.T) {
	recs := append(twoNetworks(), Record{Name: "MiXed.", Network: "front", IP: ip("10.1.0.9"), Sandbox: "MiXed"})
	tb := NewTable(recs)
	for _, name := range []string{"web", "web.", "WEB", "Web.", "mixed", "MIXED.", "mixed."} {
		if got := tb.Lookup("ui", name); len(got) != 1 {
			t.Errorf("Lookup(ui, %q) = %v, want one address", name, got)
		}
	}
	if got := tb.Lookup("ui", "web.."); got != nil {
		t.Errorf("Lookup(ui, web..) = %v, want nothing", got)
	}
}

func TestNewTableDropsBadAndDuplicates(t *testing.T) {
	tb := NewTable([]Record{
		{Name: "a", Network: "n", IP: ip("10.0.0.2"), Sandbox: "a"},
		{Name: "A.", Network: "n", IP: ip("10.0.0.2"), Sandbox: "a"}, // duplicate
		{Name: "", Network: "n", IP: ip("10.0.0.3"), Sandbox: "b"},   // no name
		{Name: "c", Network: "n", Sandbox: "c"},                      // no address
		{Name: "m", Network: "n", IP: ip("::ffff:10.0.0.4"), Sandbox: "m"},
	})
	if tb.Len() != 2 {
		t.Errorf("Len = %d, want 2", tb.Len())
	}
	if got := tb.Lookup("a", "m"); !slices.Equal(got, []netip.Addr{ip("10.0.0.4")}) {
		t.Errorf("mapped address: %v, want 10.0.0.4", got)
	}
}

func TestReverseScope(t *testing.T) {
	tb := NewTable(twoNetworks())
	for _, tc := range []struct {
		querier string
		addr    string
		want    []string
		known   bool
	}{
		{"web", "10.2.0.4", []string{"db", "database"}, true}, // sandbox name first
		{"ui", "10.2.0.4", nil, true},                         // out of scope
		{"ui", "10.1.0.2", []string{"web"}, true},
		{"ui", "10.2.0.2", nil, true}, // web's back address: ui is not on back
		{"db", "10.2.0.5", []string{"api1", "api"}, true},
		{"db", "192.0.2.1", nil, false},
	} {
		got, known := tb.reverse(tc.querier, ip(tc.addr))
		if !slices.Equal(got, tc.want) || known != tc.known {
			t.Errorf("reverse(%q, %s) = %v, %v; want %v, %v", tc.querier, tc.addr, got, known, tc.want, tc.known)
		}
	}
	if got := tb.Reverse("web", ip("10.1.0.3")); !slices.Equal(got, []string{"ui"}) {
		t.Errorf("Reverse(web, 10.1.0.3) = %v", got)
	}
}

func TestParsePTR(t *testing.T) {
	for name, want := range map[string]string{
		"4.0.2.10.in-addr.arpa.": "10.2.0.4",
		"4.0.2.10.IN-ADDR.ARPA":  "10.2.0.4",
		"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.": "2001:db8::1",
		"4.0.2.10.in-addr.arpa.x.": "",
		"0.2.10.in-addr.arpa.":     "",
		"256.0.2.10.in-addr.arpa.": "",
		"04.0.2.10.in-addr.arpa.":  "",
		"a.0.2.10.in-addr.arpa.":   "",
		"..0.2.10.in-addr.arpa.":   "",
		"1.0.ip6.arpa.":            "",
		"in-addr.arpa.":            "",
		"example.com.":             "",
	} {
		got, ok := parsePTR(name)
		if want == "" {
			if ok {
				t.Errorf("parsePTR(%q) = %v, want no address", name, got)
			}
			continue
		}
		if !ok || got != ip(want) {
			t.Errorf("parsePTR(%q) = %v, %v; want %s", name, got, ok, want)
		}
	}
}

func TestResolvConf(t *testing.T) {
	got := string(ResolvConf([]string{"corp.example", "", "bad domain", "lab"}))
	want := "# Generated by fabric: the embedded DNS server answers sandbox names\n" +
		"# and forwards everything else to the host's resolvers.\n" +
		"nameserver 127.0.0.11\nsearch corp.example lab\noptions ndots:0\n"
	if got != want {
		t.Errorf("ResolvConf =\n%s\nwant\n%s", got, want)
	}
	if got := string(ResolvConf(nil)); got != want[:len(want)-len("search corp.example lab\noptions ndots:0\n")]+"options ndots:0\n" {
		t.Errorf("ResolvConf(nil) =\n%s", got)
	}
}

func BenchmarkTableLookup(b *testing.B) {
	tb := NewTable(twoNetworks())
	var buf [8]netip.Addr
	b.ReportAllocs()
	for b.Loop() {
		tb.lookup(buf[:0], nil, "db", "api")
	}
}

func BenchmarkNewTable1000(b *testing.B) {
	var recs []Record
	for i := range 1000 {
		a := netip.AddrFrom4([4]byte{10, byte(i / 250), byte(i % 250), 2})
		n := "s" + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676))
		recs = append(recs, Record{Name: n, Network: "net" + string(rune('a'+i%4)), IP: a, Sandbox: n})
	}
	b.ReportAllocs()
	for b.Loop() {
		NewTable(recs)
	}
}

func TestTableSetReplacesOneOwner(t *testing.T) {
	tb := NewTable(nil)
	tb.Set("ep/web", []Record{
		{Name: "web", Network: "front", IP: ip("10.1.0.2"), Sandbox: "web"},
		{Name: "www", Network: "front", IP: ip("10.1.0.2"), Sandbox: "web"},
	})
	tb.Set("ep/ui", []Record{{Name: "ui", Network: "front", IP: ip("10.1.0.3"), Sandbox: "ui"}})
	if got := tb.Lookup("ui", "www"); !slices.Equal(got, []netip.Addr{ip("10.1.0.2")}) || tb.Len() != 3 {
		t.Fatalf("after two sets: Lookup(ui, www) = %v, Len %d", got, tb.Len())
	}
	// web moves to another network and loses its alias: ui shares no
	// network with it any more, and the alias is gone.
	tb.Set("ep/web", []Record{{Name: "web", Network: "back", IP: ip("10.2.0.2"), Sandbox: "web"}})
	if _, _, known := tb.lookup(nil, nil, "ui", "www"); known {
		t.Error("the dropped alias is still known")
	}
	if got := tb.Lookup("ui", "web"); got != nil {
		t.Errorf("Lookup(ui, web) after web left front = %v, want nothing", got)
	}
	if got := tb.Reverse("web", ip("10.2.0.2")); !slices.Equal(got, []string{"web"}) {
		t.Errorf("Reverse(web, 10.2.0.2) = %v", got)
	}
	tb.Set("ep/web", nil)
	tb.Set("ep/nobody", nil) // removing what is not there is fine
	if _, _, known := tb.lookup(nil, nil, "ui", "web"); known || tb.Len() != 1 {
		t.Errorf("after removing web: known %v, Len %d, want false, 1", known, tb.Len())
	}
	if len(tb.nets) != 1 || len(tb.netRefs) != 1 || len(tb.owners) != 1 || len(tb.byAddr) != 1 {
		t.Errorf("index left behind: nets %v refs %v owners %d addrs %d", tb.nets, tb.netRefs, len(tb.owners), len(tb.byAddr))
	}
}

// TestTableSetMatchesRebuild: after every one of a few hundred random Set
// calls, every lookup and reverse lookup gives what a table built from
// scratch with NewTable over the same records gives.
func TestTableSetMatchesRebuild(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	names := []string{"a", "b", "c", "api", "DB"}
	nets := []string{"n1", "n2", "n3"}
	sandboxes := []string{"a", "b", "c", ""}
	owned := map[string][]Record{}
	tb := NewTable(nil)
	for step := range 400 {
		owner := fmt.Sprintf("o%d", rnd.IntN(8))
		var recs []Record
		for range rnd.IntN(4) {
			// An address belongs to one sandbox (or to none: remote).
			host := 1 + rnd.IntN(6)
			recs = append(recs, Record{
				Name:    names[rnd.IntN(len(names))],
				Network: nets[rnd.IntN(len(nets))],
				IP:      netip.AddrFrom4([4]byte{10, 0, 0, byte(host)}),
				Sandbox: sandboxes[host%len(sandboxes)],
			})
		}
		tb.Set(owner, recs)
		owned[owner] = recs
		var all []Record
		for _, o := range slices.Sorted(maps.Keys(owned)) {
			all = append(all, owned[o]...)
		}
		want := NewTable(all)
		for _, q := range sandboxes {
			for _, n := range append(names, "nosuch") {
				g, _, gk := tb.lookup(nil, nil, q, n)
				w, _, wk := want.lookup(nil, nil, q, n)
				if gk != wk || !slices.Equal(sorted(g), sorted(w)) {
					t.Fatalf("step %d: lookup(%q, %q) = %v known %v, rebuilt table says %v known %v", step, q, n, g, gk, w, wk)
				}
			}
			for i := range 7 {
				a := netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})
				g, gk := tb.reverse(q, a)
				w, wk := want.reverse(q, a)
				slices.Sort(g)
				slices.Sort(w)
				if gk != wk || !slices.Equal(g, w) {
					t.Fatalf("step %d: reverse(%q, %s) = %v known %v, rebuilt table says %v known %v", step, q, a, g, gk, w, wk)
				}
			}
		}
	}
}

// TestTableSetDuringLookups runs Set and lookups at once (meant for -race).
func TestTableSetDuringLookups(t *testing.T) {
	tb := NewTable(nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 2000 {
			tb.Set(fmt.Sprintf("o%d", i%10), []Record{{Name: "x", Network: "n", IP: netip.AddrFrom4([4]byte{10, 0, 0, byte(i % 10)}), Sandbox: "q"}})
		}
	}()
	for i := 0; i < 2000; i++ {
		tb.Lookup("q", "x")
		tb.Reverse("q", ip("10.0.0.1"))
	}
	<-done
	if got := tb.Lookup("q", "x"); len(got) != 10 {
		t.Fatalf("x resolves to %d addresses, want 10", len(got))
	}
}
