package kernel

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// The trust boundaries of the bridge model, in the input chain (see the
// table in nft.go): sandboxes behind fabric's bridges cannot reach fabric's
// own ports on the host (gossip, tunnel, metrics: Options.GuardPorts; those
// on macvlan/ipvlan networks, which reach the host through host shims, are
// kept out of the same ports by plumb's shim guard table), and
// VXLAN is accepted only as (outer source, VNI, inner IPv4 source) triples
// the remotes allow, i.e. from a member's underlay address and only for
// the addresses that member holds. The set is rebuilt with the table on
// every change of remotes. Inner frames that are not IPv4 (remote ARP is
// answered on its own node by proxy ARP, so none should cross) have no
// source at that offset and are dropped too.

// VXLAN offsets from the outer UDP header: the VNI (with the reserved byte
// after it, which RFC 7348 keeps zero) and the inner IPv4 source address.
const (
	thVNI       = 8 + 4
	thInnerSrc  = 8 + 8 + 14 + 12
	peerKeySize = 12
)

func l4proto(proto string) byte {
	if proto == "udp" {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

// lookupTunnelPeer matches packets whose (ip saddr . VNI . inner saddr) is
// not in the named set.
func lookupTunnelPeer(set string) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 8, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Payload{DestRegister: 9, Base: expr.PayloadBaseTransportHeader, Offset: thVNI, Len: 4},
		&expr.Payload{DestRegister: 10, Base: expr.PayloadBaseTransportHeader, Offset: thInnerSrc, Len: 4},
		&expr.Lookup{SourceRegister: 8, SetName: set, Invert: true},
	}
}

func peerKey(p tunnelPeer) []byte {
	k := make([]byte, 0, peerKeySize)
	k = append(k, p.node.AsSlice()...)
	k = append(k, byte(p.vni>>16), byte(p.vni>>8), byte(p.vni), 0)
	return append(k, p.addr.AsSlice()...)
}

// peerKeys is every network's peers as set keys, sorted and without
// repeats; never nil.
func peerKeys(peers map[string][]tunnelPeer) [][]byte {
	out := [][]byte{}
	for _, ps := range peers {
		for _, p := range ps {
			out = append(out, peerKey(p))
		}
	}
	slices.SortFunc(out, func(a, b []byte) int { return slices.Compare(a, b) })
	return slices.CompactFunc(out, slices.Equal)
}

// peersOf lists what n's remotes may send.
func peersOf(n datapath.Network, remotes []datapath.Remote) []tunnelPeer {
	out := make([]tunnelPeer, 0, len(remotes))
	for _, r := range remotes {
		out = append(out, tunnelPeer{node: r.Node, vni: n.VNI, addr: r.Addr})
	}
	return out
}

// ruleset is the table for the current state and the host's settings.
func (d *Datapath) ruleset() ruleset {
	s := d.state
	s.guard = d.guard
	if d.tunnel.Local.IsValid() {
		s.tunnelPort = uint16(d.tunnelPort())
	}
	return buildRuleset(s)
}

// restorePeers reads the tunnel_peers set a previous run left, so that the
// adopted table keeps accepting the same senders until remotes are set.
func (d *Datapath) restorePeers(s *desired) error {
	set, err := d.nft.GetSetByName(table, peersSet)
	if err != nil {
		return nil // no overlay last time
	}
	elems, err := d.setElements(set)
	if err != nil {
		return fmt.Errorf("list elements of %s: %w", peersSet, err)
	}
	for _, e := range elems {
		if len(e.Key) != peerKeySize {
			continue
		}
		node, _ := netip.AddrFromSlice(e.Key[0:4])
		addr, _ := netip.AddrFromSlice(e.Key[8:12])
		vni := uint32(e.Key[4])<<16 | uint32(e.Key[5])<<8 | uint32(e.Key[6])
		k := restoredPeers(vni)
		s.peers[k] = append(s.peers[k], tunnelPeer{node: node, vni: vni, addr: addr})
	}
	return nil
}

// restoredPeers is the peers key of what an adopted set held for a VNI:
// setting the remotes of the network with that VNI replaces it.
func restoredPeers(vni uint32) string { return fmt.Sprintf("restored VNI %d", vni) }

// guardCounters reads the guard rules' drop counters as datapath
// counters, under the eBPF datapath's names: host-port drops as
// from-endpoint, tunnel ones as from-tunnel.
func (d *Datapath) guardCounters() ([]datapath.Counter, error) {
	var rules []*nftables.Rule
	for _, ch := range []string{chainIn, chainFwd} {
		rs, err := d.nft.GetRules(table, &nftables.Chain{Name: ch, Table: table})
		if errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("list rules of %s: %w", ch, err)
		}
		rules = append(rules, rs...)
	}
	sums := map[string]*datapath.Counter{
		commentHostPort:     {Direction: "from-endpoint", Verdict: "drop", Reason: "host-port"},
		commentTunnelSource: {Direction: "from-tunnel", Verdict: "drop", Reason: "tunnel-source"},
	}
	for _, r := range rules {
		c, _ := ruleComment(r.UserData)
		sum, ok := sums[c]
		if !ok {
			continue
		}
		for _, e := range r.Exprs {
			if ctr, ok := e.(*expr.Counter); ok {
				sum.Packets += ctr.Packets
				sum.Bytes += ctr.Bytes
			}
		}
	}
	var out []datapath.Counter
	for _, k := range []string{commentHostPort, commentTunnelSource} {
		if c := sums[k]; c.Packets > 0 {
			out = append(out, *c)
		}
	}
	return out, nil
}

// checkGuardPorts refuses a guarded port that is not TCP or UDP, or 0.
func checkGuardPorts(ports []datapath.HostPort) error {
	for _, g := range ports {
		if (g.Proto != "tcp" && g.Proto != "udp") || g.Port == 0 {
			return plumb.Invalidf("guarded host port %s/%d: need tcp or udp and a port", g.Proto, g.Port)
		}
	}
	return nil
}

// Metrics reports the guard rules' and the anti-spoofing table's drop
// counters (the other nftables counters are per rule, not per reason), the
// remotes skipped and the repairs.
func (d *Datapath) Metrics() (datapath.Metrics, error) {
	m := datapath.Metrics{SkippedRemotes: d.skips.Counts(), Repairs: d.pass.Repairs.Counts()}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.nft == nil {
		return m, nil
	}
	var err error
	if m.Counters, err = d.guardCounters(); err != nil {
		return m, err
	}
	if c, ok, err := d.spoofDrops(); err != nil {
		return m, err
	} else if ok {
		m.Counters = append(m.Counters, c)
	}
	// Sandboxes on macvlan/ipvlan networks reach the host through their
	// shims, guarded by plumb's own table: the same drops.
	return m, d.host.AddShimGuardDrops(&m)
}

// guardDetails describe the trust rules for Status: nothing if there
// are none.
func (d *Datapath) guardDetails() []string {
	var ports []string
	for _, g := range d.guard {
		ports = append(ports, fmt.Sprintf("%s/%d", g.Proto, g.Port))
	}
	guard := "none"
	if len(ports) > 0 {
		guard = strings.Join(ports, " ")
	}
	n := 0
	for _, ps := range d.state.peers {
		n += len(ps)
	}
	if len(ports) == 0 && len(d.state.peers) == 0 {
		return nil
	}
	return []string{fmt.Sprintf("host ports closed to sandboxes: %s; VXLAN accepted from %d (node, VNI, address) triples", guard, n)}
}
