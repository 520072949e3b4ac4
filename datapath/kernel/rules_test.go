package kernel

import (
	"encoding/json"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/google/nftables/userdata"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

func testState() desired {
	s := newDesired()
	for _, n := range []datapath.Network{
		network("neta", "br-a", "10.89.1.0/24", false),
		network("neti", "br-i", "10.89.3.0/24", true),
	} {
		s.networks[n.ID] = netStateOf(n)
	}
	s.ports["ep1"] = endpointPorts{NetworkID: "neta", Addr: netip.MustParseAddr("10.89.1.2"), Ports: []datapath.PortMapping{
		{Proto: "tcp", HostPort: 8080, Port: 80},
		{Proto: "udp", HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 5353, Port: 53},
	}}
	return s
}

// TestBuildRuleset checks the generated rules without touching the kernel.
func TestBuildRuleset(t *testing.T) {
	rs := buildRuleset(testState())
	want := map[string]int{
		chainFwd:  2 + 2 + 2, // internal in/out, conntrack accepts, isolation per bridge
		chainIn:   1,         // no 127.0.0.0/8 from sandboxes
		chainPre:  2,         // the two port-map rules, whatever the ports
		chainOut:  2,
		chainPost: 2 + 1 + 1, // hairpin per network, egress for neta, localhost
	}
	for chain, n := range want {
		if got := rs.count(chain); got != n {
			t.Errorf("%s: %d rules, want %d", chain, got, n)
		}
	}
	if strings.Join(rs.bridges, ",") != "br-a,br-i" {
		t.Errorf("bridges set = %v", rs.bridges)
	}
	// Stable order: the same state gives the same rules.
	again := buildRuleset(testState())
	for i := range rs.rules {
		if rs.rules[i].chain != again.rules[i].chain || rs.rules[i].comment != again.rules[i].comment || len(rs.rules[i].exprs) != len(again.rules[i].exprs) {
			t.Fatalf("rule %d differs between two builds", i)
		}
	}
	// The state-carrying comments decode back to the state.
	var nets, ports int
	for _, r := range rs.rules {
		if r.comment == "" {
			continue
		}
		got, ok := ruleComment(userdata.AppendString(nil, userdata.TypeComment, r.comment))
		if !ok || got != r.comment {
			t.Fatalf("comment round trip: %q -> %q", r.comment, got)
		}
		switch r.chain {
		case chainPost:
			var c netComment
			if err := json.Unmarshal([]byte(got), &c); err != nil || c.Net == "" {
				t.Errorf("network comment %q: %v", got, err)
			}
			nets++
		default:
			t.Errorf("unexpected comment in %s", r.chain)
		}
	}
	for _, p := range rs.ports {
		var c portComment
		if err := json.Unmarshal([]byte(p.elem.Comment), &c); err != nil || c.Endpoint != "ep1" || c.Addr.String() != "10.89.1.2" {
			t.Errorf("port comment %q: %v", p.elem.Comment, err)
		}
		ports++
	}
	if nets != 2 || ports != 2 {
		t.Errorf("comments: %d networks, %d ports; want 2 and 2", nets, ports)
	}

	if empty := buildRuleset(newDesired()); len(empty.rules) != 0 || len(empty.bridges) != 0 {
		t.Errorf("empty state gave %d rules", len(empty.rules))
	}
	if c := encodeNetComment(netState{ID: strings.Repeat("x", 300)}); c != "" {
		t.Errorf("over-long comment kept (%d bytes)", len(c))
	}
}

func TestRuleCommentRejectsTruncatedUserdata(t *testing.T) {
	for _, ud := range [][]byte{nil, {0}, {0, 10, 'a'}, {1, 1, 'x'}} {
		if _, ok := ruleComment(ud); ok {
			t.Errorf("ruleComment(%v) accepted", ud)
		}
	}
}

// TestTableAsNftSeesIt checks that the table is what the design says, as
// the nft tool prints it.
func TestTableAsNftSeesIt(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	a := l.bridgeNetwork("neta", "br-a", "10.89.1.0/24", false)
	l.bridgeNetwork("neti", "br-i", "10.89.3.0/24", true)
	l.join(a, "ep1", "vh1", 2,
		datapath.PortMapping{Proto: "tcp", HostPort: 8080, Port: 80},
		datapath.PortMapping{Proto: "udp", HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 5353, Port: 53})
	out := netnstest.Run(t, l.hostName, "nft", "list", "table", "ip", "fabric")
	for _, want := range []string{
		`elements = { "br-a",`,
		`iifname "br-i" oifname != "br-i" counter packets 0 bytes 0 drop`,
		`oifname "br-i" iifname != "br-i" counter packets 0 bytes 0 drop`,
		`ct state established,related accept`,
		`iifname @bridges ip daddr 127.0.0.0/8 ct state ! established,related counter packets 0 bytes 0 drop`,
		`ct status dnat accept`,
		`iifname "br-a" oifname != "br-a" oifname @bridges counter packets 0 bytes 0 drop`,
		`fib daddr type local counter packets 0 bytes 0 dnat ip to meta l4proto . th dport map @ports`,
		`counter packets 0 bytes 0 dnat ip to ip daddr . meta l4proto . th dport map @ports_addr`,
		`elements = { tcp . 8080 comment`,
		`: 10.89.1.2 . 80 }`,
		`elements = { 127.0.0.1 . udp . 5353 comment`,
		`: 10.89.1.2 . 53 }`,
		`ct status dnat ip saddr 10.89.1.0/24 oifname "br-a" masquerade`,
		`ip saddr 10.89.1.0/24 oifname != "br-a" masquerade`,
		`ip saddr 127.0.0.0/8 oifname @bridges masquerade`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, `ip saddr 10.89.3.0/24 oifname != "br-i" masquerade`) {
		t.Error("internal network is masqueraded")
	}
}

var dropCounterRE = regexp.MustCompile(`iifname "br-a" oifname != "br-a" oifname @bridges counter packets (\d+)`)

// isolationDrops returns the packet counter of br-a's isolation rule.
func (l *lab) isolationDrops() int {
	l.t.Helper()
	m := dropCounterRE.FindStringSubmatch(netnstest.Run(l.t, l.hostName, "nft", "list", "chain", "ip", "fabric", "forward"))
	if m == nil {
		l.t.Fatal("no isolation rule for br-a")
	}
	n, _ := strconv.Atoi(m[1])
	return n
}
