package kernel

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	mdnetlink "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath/plumb"
)

// The table fabric owns entirely. It is replaced as a whole, in one netlink
// transaction, whenever networks change; a published-port change updates
// only that endpoint's elements of the port maps (portmaps.go):
//
//	table ip fabric {
//	  set bridges { type ifname; elements = { every fabric bridge } }
//	  chain forward { type filter hook forward priority filter; policy accept;
//	    iifname @bridges udp dport TUNNEL drop             # with a tunnel: no sandbox VXLAN to any node
//	    iifname INTERNAL oifname != INTERNAL drop        # per internal network,
//	    oifname INTERNAL iifname != INTERNAL drop        #   before anything else
//	    ct state established,related accept
//	    ct status dnat accept                           # published ports: from anywhere
//	    iifname BR oifname != BR oifname @bridges drop  # per network: isolation
//	  }
//	  set tunnel_peers { type ipv4_addr . integer . ipv4_addr }  # node . VNI . inner source
//	  chain input { type filter hook input priority filter; policy accept;
//	    iifname @bridges ip daddr 127.0.0.0/8 ct state != established,related drop
//	    iifname @bridges meta l4proto P th dport GUARDED drop   # per fabric port (gossip, tunnel, metrics)
//	    udp dport TUNNEL ip saddr . @th,96,32 . @th,336,32 != @tunnel_peers drop  # with overlays
//	  }
//	  map ports, map ports_addr   # published ports (portmaps.go)
//	  chain prerouting { type nat hook prerouting priority dstnat;
//	    fib daddr type local dnat ip to meta l4proto . th dport map @ports
//	    dnat ip to ip daddr . meta l4proto . th dport map @ports_addr
//	  }
//	  chain output { type nat hook output priority dstnat;  same rules, for host clients }
//	  chain postrouting { type nat hook postrouting priority srcnat;
//	    ct status dnat ip saddr SUBNET oifname BR masquerade   # per network: hairpin
//	    ip saddr SUBNET oifname != BR masquerade               # per non-internal network
//	    ip saddr 127.0.0.0/8 oifname @bridges masquerade       # localhost published ports
//	  }
//	}
//
// Internal networks are dropped before the conntrack accepts, so a
// published port does not open an internal network to the outside. The one
// input rule exists because route_localnet (needed for 127.0.0.1 published
// ports) would otherwise let a sandbox send packets to the host's
// 127.0.0.1 services through its gateway (CVE-2020-8558); replies of
// localhost published ports are established and still pass.
const (
	tableName   = plumb.NFTable
	bridgesSet  = "bridges"
	peersSet    = "tunnel_peers"
	chainFwd    = "forward"
	chainIn     = "input"
	chainPre    = "prerouting"
	chainOut    = "output"
	chainPost   = "postrouting"
	ifNameBytes = 16
)

var table = &nftables.Table{Name: tableName, Family: nftables.TableFamilyIPv4}

// rule is one generated rule, kept apart from a connection so the ruleset
// can be built and inspected without privileges.
type rule struct {
	chain   string
	exprs   []expr.Any
	comment string // machine-readable, lets a restarted datapath adopt the table
}

type ruleset struct {
	bridges []string
	rules   []rule
	// peers is the tunnel_peers set (12-byte keys); nil: no set, no rule.
	peers [][]byte
	// ports are the elements of the port maps, which exist (with their
	// rules) whenever the table does.
	ports []portElem
}

// Comments of the input chain's drop rules; Metrics reads their counters.
const (
	commentHostPort     = "drop:host-port"
	commentTunnelSource = "drop:tunnel-source"
)

// chainSpecs are the base chains, in creation order.
var chainSpecs = []nftables.Chain{
	{Name: chainFwd, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter},
	{Name: chainIn, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter},
	{Name: chainPre, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest},
	{Name: chainOut, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest},
	{Name: chainPost, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource},
}

// buildRuleset turns the desired state into rules, in a stable order.
func buildRuleset(s desired) ruleset {
	nets := make([]netState, 0, len(s.networks))
	for _, n := range s.networks {
		nets = append(nets, n)
	}
	slices.SortFunc(nets, func(a, b netState) int { return cmp.Compare(a.ID, b.ID) })

	var rs ruleset
	if len(nets) == 0 && len(s.ports) == 0 {
		return rs // nothing to program: no table at all
	}
	add := func(chain, comment string, exprs ...expr.Any) {
		rs.rules = append(rs.rules, rule{chain: chain, exprs: exprs, comment: comment})
	}
	for _, n := range nets {
		rs.bridges = append(rs.bridges, n.Bridge)
	}

	// forward
	if len(nets) > 0 && s.tunnelPort != 0 {
		// Masqueraded, a sandbox's VXLAN would reach other nodes as this
		// host's: the tunnel port is fabric's on every host.
		add(chainFwd, commentHostPort, cat(lookupIif(bridgesSet), matchL4(unix.IPPROTO_UDP, s.tunnelPort), counterDrop())...)
	}
	for _, n := range nets {
		if !n.Internal {
			continue
		}
		add(chainFwd, "", cat(matchIif(n.Bridge, true), matchOif(n.Bridge, false), counterDrop())...)
		add(chainFwd, "", cat(matchOif(n.Bridge, true), matchIif(n.Bridge, false), counterDrop())...)
	}
	add(chainFwd, "", cat(matchCtState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), accept())...)
	add(chainFwd, "", cat(matchCtDNAT(), accept())...)
	for _, n := range nets {
		add(chainFwd, "", cat(matchIif(n.Bridge, true), matchOif(n.Bridge, false), lookupOif(bridgesSet), counterDrop())...)
	}

	// input
	if len(nets) > 0 {
		add(chainIn, "", cat(lookupIif(bridgesSet), matchAddr(16, []byte{127, 0, 0, 0}, 8),
			matchCtStateNone(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), counterDrop())...)
		for _, g := range s.guard {
			add(chainIn, commentHostPort, cat(lookupIif(bridgesSet), matchL4(l4proto(g.Proto), g.Port), counterDrop())...)
		}
	}
	if len(s.peers) > 0 && s.tunnelPort != 0 {
		rs.peers = peerKeys(s.peers)
		add(chainIn, commentTunnelSource, cat(matchL4(unix.IPPROTO_UDP, s.tunnelPort), lookupTunnelPeer(peersSet), counterDrop())...)
	}

	// prerouting and output
	for _, p := range sortedPorts(s) {
		rs.ports = append(rs.ports, portElemOf(p))
	}
	for _, exprs := range portRules() {
		add(chainPre, "", exprs...)
		add(chainOut, "", exprs...)
	}

	// postrouting
	for _, n := range nets {
		add(chainPost, encodeNetComment(n), cat(matchCtDNAT(), matchAddr(12, n.Subnet.Addr().AsSlice(), n.Subnet.Bits()), matchOif(n.Bridge, true), masq())...)
		if !n.Internal {
			add(chainPost, "", cat(matchAddr(12, n.Subnet.Addr().AsSlice(), n.Subnet.Bits()), matchOif(n.Bridge, false), masq())...)
		}
	}
	if len(nets) > 0 {
		add(chainPost, "", cat(matchAddr(12, []byte{127, 0, 0, 0}, 8), lookupOif(bridgesSet), masq())...)
	}
	return rs
}

func (rs ruleset) count(chain string) int {
	n := 0
	for _, r := range rs.rules {
		if r.chain == chain {
			n++
		}
	}
	return n
}

// applyRuleset replaces the table with one generated from d.state, in a
// single transaction: a packet sees either the old table or the new one.
// With nothing to program the table is removed.
func (d *Datapath) applyRuleset() error {
	rs := d.ruleset()
	c, err := d.batchConn()
	if err != nil {
		d.dirty = true
		return fmt.Errorf("replace nftables table %s: %w", tableName, err)
	}
	// Adding first makes the delete succeed whether or not the table exists.
	c.AddTable(table)
	c.DelTable(table)
	if len(rs.bridges) > 0 || len(rs.rules) > 0 {
		if err := queueRuleset(c, rs); err != nil {
			d.dirty = true
			return err
		}
	}
	d.nftBatches++
	if err := c.Flush(); err != nil {
		d.dirty = true
		return fmt.Errorf("replace nftables table %s: %w", tableName, err)
	}
	d.dirty = false
	d.tableLive = len(rs.bridges) > 0 || len(rs.rules) > 0
	d.log.Debug("nftables table replaced", "networks", len(d.state.networks), "rules", len(rs.rules))
	return nil
}

// nftBatchBuffer is the send and receive buffer of the connection that
// replaces the table. The whole table goes in one message (one transaction)
// and the kernel answers every rule in it before the library reads any
// answer; with the default buffers (net.core.wmem/rmem_default, 208 KiB) a
// table of a few dozen published ports overflowed them (EMSGSIZE on send,
// ENOBUFS on receive). 16 MiB (the kernel doubles it) holds thousands of
// published ports; memory is only used while a batch is in flight.
const nftBatchBuffer = 16 << 20

// batchConn is a fresh connection, in the host namespace, for one table
// replacement: nothing a failed batch left unread can spoil the next one,
// as it would on a lasting connection.
func (d *Datapath) batchConn() (*nftables.Conn, error) {
	return nftables.New(nftables.WithNetNSFd(int(d.host.NS())), nftables.WithSockOptions(forceBuffers(nftBatchBuffer)))
}

// forceBuffers sets a netlink socket's buffers past the net.core.*mem_max
// limits (SO_*BUFFORCE, which the agent may use: it runs with
// CAP_NET_ADMIN), or as far as those limits allow otherwise.
func forceBuffers(size int) nftables.SockOption {
	return func(c *mdnetlink.Conn) error {
		rc, err := c.SyscallConn()
		if err != nil {
			return fmt.Errorf("netlink socket: %w", err)
		}
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = errors.Join(
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, size),
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size))
		}); err != nil {
			return fmt.Errorf("netlink socket: %w", err)
		}
		if serr != nil {
			return errors.Join(c.SetWriteBuffer(size), c.SetReadBuffer(size))
		}
		return nil
	}
}

func queueRuleset(c *nftables.Conn, rs ruleset) error {
	c.AddTable(table)
	// Host byte order is how nft itself declares ifname sets; without it
	// `nft list` shows the names as "".
	// The ID only names the set within this transaction; fixing it keeps
	// the library from touching its global (unsynchronised) ID counter.
	set := &nftables.Set{Table: table, ID: setIDBridges, Name: bridgesSet, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian}
	elems := make([]nftables.SetElement, 0, len(rs.bridges))
	for _, b := range rs.bridges {
		elems = append(elems, nftables.SetElement{Key: ifname(b)})
	}
	if err := addSet(c, set, elems); err != nil {
		return fmt.Errorf("queue set %s: %w", bridgesSet, err)
	}
	sets := map[string]uint32{set.Name: set.ID}
	if rs.peers != nil {
		peers := &nftables.Set{Table: table, ID: setIDPeers, Name: peersSet, Concatenation: true,
			KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInteger, nftables.TypeIPAddr)}
		elems := make([]nftables.SetElement, 0, len(rs.peers))
		for _, k := range rs.peers {
			elems = append(elems, nftables.SetElement{Key: k})
		}
		if err := addSet(c, peers, elems); err != nil {
			return fmt.Errorf("queue set %s: %w", peersSet, err)
		}
		sets[peers.Name] = peers.ID
	}
	if err := queuePortMaps(c, rs, sets); err != nil {
		return err
	}
	chains := map[string]*nftables.Chain{}
	accept := nftables.ChainPolicyAccept
	for _, spec := range chainSpecs {
		ch := spec
		ch.Table = table
		if ch.Type == nftables.ChainTypeFilter {
			ch.Policy = &accept
		}
		chains[ch.Name] = c.AddChain(&ch)
	}
	for _, r := range rs.rules {
		exprs := r.exprs
		for i, e := range exprs {
			if l, ok := e.(*expr.Lookup); ok && sets[l.SetName] != 0 {
				l2 := *l
				l2.SetID = sets[l.SetName]
				exprs = slices.Clone(exprs)
				exprs[i] = &l2
			}
		}
		nr := &nftables.Rule{Table: table, Chain: chains[r.chain], Exprs: exprs}
		if r.comment != "" {
			nr.UserData = userdata.AppendString(nil, userdata.TypeComment, r.comment)
		}
		c.AddRule(nr)
	}
	return nil
}

// ensureTableIntact rebuilds the table if someone removed or changed it
// behind the datapath's back (e.g. `nft flush ruleset`). It compares rule
// counts per chain, which catches removal without a full comparison.
func (d *Datapath) ensureTableIntact() error {
	rs := d.ruleset()
	intact, err := d.tableMatches(rs)
	if err != nil {
		d.log.Warn("cannot read nftables table; rebuilding it", "err", err)
	}
	if intact {
		return nil
	}
	return d.applyRuleset()
}

func (d *Datapath) tableMatches(rs ruleset) (bool, error) {
	chains, err := d.nft.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return false, fmt.Errorf("list chains: %w", err)
	}
	found := 0
	for _, ch := range chains {
		if ch.Table.Name != tableName {
			continue
		}
		found++
		rules, err := d.nft.GetRules(table, ch)
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("list rules of %s: %w", ch.Name, err)
		}
		if len(rules) != rs.count(ch.Name) {
			return false, nil
		}
	}
	if len(rs.bridges) == 0 && len(rs.rules) == 0 {
		return found == 0, nil
	}
	if found != len(chainSpecs) {
		return false, nil
	}
	return d.portMapsMatch(rs)
}
