package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func pfx(s string) netip.Prefix {
	if s == "" {
		return netip.Prefix{}
	}
	return netip.MustParsePrefix(s)
}

func addr(s string) netip.Addr {
	if s == "" {
		return netip.Addr{}
	}
	return netip.MustParseAddr(s)
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = addr(s)
	}
	return out
}

func mustPool(t *testing.T, subnet, gw, ipRange string, exclude ...string) *Pool {
	t.Helper()
	p, err := NewPool(pfx(subnet), addr(gw), pfx(ipRange), addrs(exclude...))
	if err != nil {
		t.Fatalf("NewPool(%s, %s, %s): %v", subnet, gw, ipRange, err)
	}
	return p
}

// allocateAll allocates until the pool is exhausted and returns what it got.
func allocateAll(t *testing.T, p *Pool) []string {
	t.Helper()
	var got []string
	for i := 0; ; i++ {
		a, err := p.Allocate(fmt.Sprintf("c%d", i))
		if errors.Is(err, ErrExhausted) {
			return got
		}
		if err != nil {
			t.Fatalf("Allocate: %v", err)
		}
		got = append(got, a.String())
		if i > 1<<17 {
			t.Fatal("Allocate never reported exhaustion")
		}
	}
}

func TestValidateNetwork(t *testing.T) {
	tests := []struct {
		name    string
		subnet  string
		gateway string
		ipRange string
		wantErr string // substring; "" means valid
	}{
		{"plain", "10.0.0.0/24", "", "", ""},
		{"with gateway and range", "10.0.0.0/24", "10.0.0.254", "10.0.0.128/25", ""},
		{"range equals subnet", "10.0.0.0/24", "", "10.0.0.0/24", ""},
		{"smallest", "10.0.0.0/30", "10.0.0.2", "", ""},
		{"largest", "10.0.0.0/8", "", "", ""},
		{"missing subnet", "", "", "", "subnet is required"},
		{"host bits", "10.0.0.5/24", "", "", "use 10.0.0.0/24"},
		{"ipv6 subnet", "fd00::/64", "", "", "only IPv4"},
		{"too small", "10.0.0.0/31", "", "", "between /8 and /30"},
		{"too large", "10.0.0.0/7", "", "", "between /8 and /30"},
		{"gateway outside", "10.0.0.0/24", "10.0.1.1", "", "outside subnet"},
		{"gateway network", "10.0.0.0/24", "10.0.0.0", "", "network address"},
		{"gateway broadcast", "10.0.0.0/24", "10.0.0.255", "", "broadcast address"},
		{"gateway ipv6", "10.0.0.0/24", "fd00::1", "", "not IPv4"},
		{"range outside", "10.0.0.0/24", "", "10.0.1.0/25", "not inside subnet"},
		{"range larger", "10.0.0.0/24", "", "10.0.0.0/23", "not inside subnet"},
		{"range host bits", "10.0.0.0/24", "", "10.0.0.130/25", "use 10.0.0.128/25"},
		{"range ipv6", "10.0.0.0/24", "", "fd00::/120", "not IPv4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateNetwork(pfx(tt.subnet), addr(tt.gateway), pfx(tt.ipRange))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want error containing %q, got nil", tt.wantErr)
			}
			if !errors.Is(err, ErrInvalidNetwork) {
				t.Errorf("error %v does not wrap ErrInvalidNetwork", err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestDefaultGateway(t *testing.T) {
	tests := []struct{ subnet, want string }{
		{"10.0.0.0/24", "10.0.0.1"},
		{"172.17.0.0/16", "172.17.0.1"},
		{"192.168.16.0/20", "192.168.16.1"},
		{"10.0.0.4/30", "10.0.0.5"},
	}
	for _, tt := range tests {
		if got := DefaultGateway(pfx(tt.subnet)); got != addr(tt.want) {
			t.Errorf("DefaultGateway(%s) = %s, want %s", tt.subnet, got, tt.want)
		}
	}
	if got := DefaultGateway(pfx("fd00::/64")); got.IsValid() {
		t.Errorf("DefaultGateway(IPv6) = %s, want zero", got)
	}
}

func TestNewPoolErrors(t *testing.T) {
	tests := []struct {
		name, subnet, gateway, ipRange string
		exclude                        []string
	}{
		{"bad subnet", "10.0.0.1/24", "", "", nil},
		{"bad range", "10.0.0.0/24", "", "10.0.5.0/28", nil},
		{"exclude outside", "10.0.0.0/24", "", "", []string{"10.0.1.7"}},
		{"exclude ipv6", "10.0.0.0/24", "", "", []string{"fd00::7"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewPool(pfx(tt.subnet), addr(tt.gateway), pfx(tt.ipRange), addrs(tt.exclude...))
			if !errors.Is(err, ErrInvalidNetwork) {
				t.Fatalf("NewPool error = %v, want ErrInvalidNetwork", err)
			}
		})
	}
}

func TestAllocateOrder(t *testing.T) {
	tests := []struct {
		name                     string
		subnet, gateway, ipRange string
		exclude                  []string
		want                     []string // every address until exhaustion, in order
		wantSize                 int
	}{
		{
			name: "slash30", subnet: "10.0.0.0/30",
			want: []string{"10.0.0.2"}, wantSize: 1,
		},
		{
			name: "slash29", subnet: "10.0.0.0/29",
			want:     []string{"10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"},
			wantSize: 5,
		},
		{
			name: "slash29 gateway at end", subnet: "10.0.0.0/29", gateway: "10.0.0.6",
			want:     []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"},
			wantSize: 5,
		},
		{
			name: "slash29 with exclusions", subnet: "10.0.0.0/29", exclude: []string{"10.0.0.3", "10.0.0.5"},
			want:     []string{"10.0.0.2", "10.0.0.4", "10.0.0.6"},
			wantSize: 3,
		},
		{
			name: "range in upper half", subnet: "10.0.0.0/24", ipRange: "10.0.0.248/29",
			// 10.0.0.255 is the broadcast address.
			want:     []string{"10.0.0.248", "10.0.0.249", "10.0.0.250", "10.0.0.251", "10.0.0.252", "10.0.0.253", "10.0.0.254"},
			wantSize: 7,
		},
		{
			name: "slash30 range holding gateway and network", subnet: "10.0.0.0/24", ipRange: "10.0.0.0/30",
			want: []string{"10.0.0.2", "10.0.0.3"}, wantSize: 2,
		},
		{
			name: "single address range", subnet: "10.0.0.0/24", ipRange: "10.0.0.77/32",
			want: []string{"10.0.0.77"}, wantSize: 1,
		},
		{
			name: "range that is only the gateway", subnet: "10.0.0.0/24", ipRange: "10.0.0.1/32",
			want: nil, wantSize: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustPool(t, tt.subnet, tt.gateway, tt.ipRange, tt.exclude...)
			if got := p.Size(); got != tt.wantSize {
				t.Errorf("Size() = %d, want %d", got, tt.wantSize)
			}
			if got := p.Free(); got != tt.wantSize {
				t.Errorf("Free() before allocating = %d, want %d", got, tt.wantSize)
			}
			got := allocateAll(t, p)
			if !slices.Equal(got, tt.want) {
				t.Errorf("allocated %v, want %v", got, tt.want)
			}
			if p.Free() != 0 || p.Used() != len(tt.want) {
				t.Errorf("after exhaustion Free()=%d Used()=%d, want 0 and %d", p.Free(), p.Used(), len(tt.want))
			}
		})
	}
}

func TestExhaustedMessage(t *testing.T) {
	p := mustPool(t, "10.0.0.0/24", "", "10.0.0.8/29")
	allocateAll(t, p)
	_, err := p.Allocate("late")
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("err = %v, want ErrExhausted", err)
	}
	for _, want := range []string{"10.0.0.0/24", "ip-range 10.0.0.8/29", "8 assignable"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestNextFitWrap(t *testing.T) {
	p := mustPool(t, "10.0.0.0/29", "", "") // assignable: .2 .3 .4 .5 .6
	must := func(owner, want string) {
		t.Helper()
		a, err := p.Allocate(owner)
		if err != nil {
			t.Fatalf("Allocate(%s): %v", owner, err)
		}
		if a != addr(want) {
			t.Fatalf("Allocate(%s) = %s, want %s", owner, a, want)
		}
	}
	must("a", "10.0.0.2")
	must("b", "10.0.0.3")
	must("c", "10.0.0.4")

	// A just-released address is not reused while later ones are free.
	p.Release(addr("10.0.0.3"))
	must("d", "10.0.0.5")
	must("e", "10.0.0.6")
	// Past the end the search wraps around and finds the released address.
	must("f", "10.0.0.3")

	if _, err := p.Allocate("g"); !errors.Is(err, ErrExhausted) {
		t.Fatalf("Allocate on full pool: err = %v, want ErrExhausted", err)
	}
	// Releasing two addresses: the one after the last allocation comes first.
	p.Release(addr("10.0.0.2"))
	p.Release(addr("10.0.0.5"))
	must("h", "10.0.0.5")
	must("i", "10.0.0.2")
}

func TestReleaseThenReallocate(t *testing.T) {
	p := mustPool(t, "10.0.0.0/30", "", "") // only 10.0.0.2
	a, err := p.Allocate("first")
	if err != nil {
		t.Fatal(err)
	}
	if o, ok := p.Owner(a); !ok || o != "first" {
		t.Fatalf("Owner(%s) = %q, %v", a, o, ok)
	}
	p.Release(a)
	if _, ok := p.Owner(a); ok {
		t.Fatalf("Owner(%s) still set after Release", a)
	}
	if p.Used() != 0 || p.Free() != 1 {
		t.Fatalf("after Release Used()=%d Free()=%d, want 0 and 1", p.Used(), p.Free())
	}
	b, err := p.Allocate("second")
	if err != nil || b != a {
		t.Fatalf("re-Allocate = %s, %v; want %s", b, err, a)
	}

	// Releasing unknown, reserved or foreign addresses changes nothing.
	for _, ip := range []string{"10.0.0.0", "10.0.0.1", "10.0.0.3", "10.9.9.9", "fd00::1"} {
		p.Release(addr(ip))
	}
	p.Release(netip.Addr{})
	if p.Used() != 1 || p.Free() != 0 {
		t.Fatalf("no-op releases changed counts: Used()=%d Free()=%d", p.Used(), p.Free())
	}
	if _, err := p.Allocate("third"); !errors.Is(err, ErrExhausted) {
		t.Fatalf("no-op release freed a reserved address: err = %v", err)
	}
}

func TestClaim(t *testing.T) {
	newPool := func(t *testing.T) *Pool {
		p := mustPool(t, "10.0.0.0/24", "10.0.0.1", "10.0.0.128/25", "10.0.0.10", "10.0.0.200")
		if err := p.Claim(addr("10.0.0.50"), "existing"); err != nil {
			t.Fatalf("setup claim: %v", err)
		}
		return p
	}
	tests := []struct {
		name    string
		ip      string
		wantErr error
		wantMsg string
	}{
		{"inside range", "10.0.0.130", nil, ""},
		{"outside range inside subnet", "10.0.0.20", nil, ""},
		{"last usable", "10.0.0.254", nil, ""},
		{"outside subnet", "10.0.1.5", ErrOutOfSubnet, "not in subnet 10.0.0.0/24"},
		{"ipv6", "fd00::5", ErrOutOfSubnet, "10.0.0.0/24"},
		{"zero address", "", ErrOutOfSubnet, "10.0.0.0/24"},
		{"gateway", "10.0.0.1", ErrReserved, "gateway"},
		{"network", "10.0.0.0", ErrReserved, "network address"},
		{"broadcast", "10.0.0.255", ErrReserved, "broadcast address"},
		{"excluded outside range", "10.0.0.10", ErrReserved, "excluded"},
		{"excluded inside range", "10.0.0.200", ErrReserved, "excluded"},
		{"duplicate", "10.0.0.50", ErrInUse, `"existing"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPool(t)
			used, free := p.Used(), p.Free()
			err := p.Claim(addr(tt.ip), "new")
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Claim(%s): %v", tt.ip, err)
				}
				if o, ok := p.Owner(addr(tt.ip)); !ok || o != "new" {
					t.Errorf("Owner(%s) = %q, %v", tt.ip, o, ok)
				}
				if p.Used() != used+1 {
					t.Errorf("Used() = %d, want %d", p.Used(), used+1)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Claim(%s) error = %v, want %v", tt.ip, err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not contain %q", err, tt.wantMsg)
			}
			if p.Used() != used || p.Free() != free {
				t.Errorf("failed claim changed counts: Used %d→%d Free %d→%d", used, p.Used(), free, p.Free())
			}
		})
	}
}

func TestClaimAndAllocateInteract(t *testing.T) {
	p := mustPool(t, "10.0.0.0/24", "", "10.0.0.0/29") // assignable .2-.7 (.7 is not the /24 broadcast)
	// A static claim outside the range does not consume dynamic space.
	if err := p.Claim(addr("10.0.0.100"), "static-out"); err != nil {
		t.Fatal(err)
	}
	if p.Free() != 6 {
		t.Fatalf("Free() = %d after claim outside range, want 6", p.Free())
	}
	// A static claim inside the range does, and Allocate skips it.
	if err := p.Claim(addr("10.0.0.3"), "static-in"); err != nil {
		t.Fatal(err)
	}
	if p.Free() != 5 {
		t.Fatalf("Free() = %d after claim inside range, want 5", p.Free())
	}
	got := allocateAll(t, p)
	want := []string{"10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7"}
	if !slices.Equal(got, want) {
		t.Fatalf("allocated %v, want %v", got, want)
	}
	// An allocated address cannot be claimed again.
	if err := p.Claim(addr("10.0.0.4"), "x"); !errors.Is(err, ErrInUse) {
		t.Fatalf("Claim of allocated address: err = %v, want ErrInUse", err)
	}
	if p.Used() != 7 {
		t.Fatalf("Used() = %d, want 7", p.Used())
	}
	// Releasing the static claim inside the range makes it allocatable.
	p.Release(addr("10.0.0.3"))
	if a, err := p.Allocate("y"); err != nil || a != addr("10.0.0.3") {
		t.Fatalf("Allocate after release = %s, %v; want 10.0.0.3", a, err)
	}
}

func TestLargePool(t *testing.T) {
	p := mustPool(t, "10.20.0.0/16", "", "")
	if p.Size() != 65533 {
		t.Fatalf("Size() = %d, want 65533", p.Size())
	}
	const n = 5000
	seen := make(map[netip.Addr]bool, n)
	for i := range n {
		a, err := p.Allocate(fmt.Sprintf("c%d", i))
		if err != nil {
			t.Fatalf("Allocate #%d: %v", i, err)
		}
		if seen[a] {
			t.Fatalf("Allocate #%d returned %s twice", i, a)
		}
		seen[a] = true
	}
	// Free every other address and allocate again: next-fit continues past
	// the last allocation instead of refilling the holes.
	for a := range seen {
		if a.As4()[3]%2 == 0 {
			p.Release(a)
		}
	}
	a, err := p.Allocate("after")
	if err != nil {
		t.Fatal(err)
	}
	if seen[a] {
		t.Fatalf("Allocate reused %s right after release", a)
	}
	if p.Used() > n || p.Free() != p.Size()-p.Used() {
		t.Fatalf("inconsistent counts: Used()=%d Free()=%d Size()=%d", p.Used(), p.Free(), p.Size())
	}
	// Fill the whole /16; everything must still be handed out exactly once.
	rest := allocateAll(t, p)
	if p.Free() != 0 || p.Used() != p.Size() {
		t.Fatalf("after fill Used()=%d Free()=%d Size()=%d (allocated %d more)", p.Used(), p.Free(), p.Size(), len(rest))
	}
}

func TestDefaultPools(t *testing.T) {
	pools := DefaultPools()
	if len(pools) != 31 {
		t.Fatalf("len(DefaultPools()) = %d, want 31", len(pools))
	}
	checks := map[int]string{0: "172.17.0.0/16", 14: "172.31.0.0/16", 15: "192.168.0.0/20", 16: "192.168.16.0/20", 30: "192.168.240.0/20"}
	for i, want := range checks {
		if pools[i] != pfx(want) {
			t.Errorf("DefaultPools()[%d] = %s, want %s", i, pools[i], want)
		}
	}
	for i, p := range pools {
		if err := ValidateNetwork(p, netip.Addr{}, netip.Prefix{}); err != nil {
			t.Errorf("pool %d %s invalid: %v", i, p, err)
		}
		for _, q := range pools[i+1:] {
			if Overlaps(p, q) {
				t.Errorf("pools %s and %s overlap", p, q)
			}
		}
	}
}

func TestOverlaps(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"10.0.0.0/8", "10.1.0.0/16", true},
		{"10.1.0.0/16", "10.0.0.0/8", true},
		{"10.0.0.0/24", "10.0.1.0/24", false},
		{"172.17.0.0/16", "172.17.5.0/24", true},
		{"192.168.0.0/20", "192.168.16.0/20", false},
		{"192.168.0.0/20", "192.168.15.255/32", true},
		{"10.0.0.5/24", "10.0.0.200/32", true}, // host bits ignored
		{"10.0.0.0/8", "fd00::/8", false},
		{"", "10.0.0.0/8", false},
	}
	for _, tt := range tests {
		if got := Overlaps(pfx(tt.a), pfx(tt.b)); got != tt.want {
			t.Errorf("Overlaps(%s, %s) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestPickSubnet(t *testing.T) {
	defaults := DefaultPools()
	tests := []struct {
		name       string
		candidates []netip.Prefix
		taken      []string
		want       string // "" means ErrNoFreeSubnet
	}{
		{"nothing taken", defaults, nil, "172.17.0.0/16"},
		{"first taken by docker0", defaults, []string{"172.17.0.0/16"}, "172.18.0.0/16"},
		{"small route inside a candidate", defaults, []string{"172.17.42.0/24"}, "172.18.0.0/16"},
		{"host route inside second", defaults, []string{"172.17.0.0/16", "172.18.0.1/32"}, "172.19.0.0/16"},
		{"slash12 covers all 172 pools", defaults, []string{"172.16.0.0/12"}, "192.168.0.0/20"},
		{"slash8 covers all 172 pools", defaults, []string{"172.0.0.0/8", "192.168.1.0/24"}, "192.168.16.0/20"},
		{"unrelated routes", defaults, []string{"10.0.0.0/8", "127.0.0.0/8", "fd00::/8"}, "172.17.0.0/16"},
		{"everything taken", defaults, []string{"172.16.0.0/12", "192.168.0.0/16"}, ""},
		{"no candidates", nil, nil, ""},
		{"custom candidates", []netip.Prefix{pfx("10.10.0.0/24"), pfx("10.10.1.0/24")}, []string{"10.10.0.128/25"}, "10.10.1.0/24"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var taken []netip.Prefix
			for _, s := range tt.taken {
				taken = append(taken, pfx(s))
			}
			got, err := PickSubnet(tt.candidates, taken)
			if tt.want == "" {
				if !errors.Is(err, ErrNoFreeSubnet) {
					t.Fatalf("PickSubnet = %s, %v; want ErrNoFreeSubnet", got, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("PickSubnet: %v", err)
			}
			if got != pfx(tt.want) {
				t.Fatalf("PickSubnet = %s, want %s", got, tt.want)
			}
		})
	}
}

// TestPoolReadersDuringChanges: Used and Free may be read while another
// goroutine allocates and releases (status and metrics do not take the
// agent's lock); run with -race.
func TestPoolReadersDuringChanges(t *testing.T) {
	p, err := NewPool(netip.MustParsePrefix("10.9.0.0/24"), netip.Addr{}, netip.Prefix{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 200 {
			ip, err := p.Allocate(fmt.Sprint("owner ", i))
			if err != nil {
				t.Error(err)
				return
			}
			p.Release(ip)
		}
	}()
	for range 200 {
		if used, free := p.Used(), p.Free(); used < 0 || used > 1 || free < p.Size()-1 {
			t.Fatalf("used %d, free %d of %d while one address comes and goes", used, free, p.Size())
		}
	}
	<-done
	if p.Used() != 0 || p.Free() != p.Size() {
		t.Fatalf("after the changes: used %d, free %d of %d", p.Used(), p.Free(), p.Size())
	}
}
