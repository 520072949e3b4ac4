package kernel

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
	fabricns "github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// Anti-spoofing for bridge-network endpoints, in a second table fabric owns
// entirely, in the bridge family: its prerouting hook sees every frame a
// sandbox puts on its bridge port, whether it is then bridged to a
// neighbour, to a VXLAN device or up to the host, without br_netfilter.
//
//	table bridge fabric {
//	  set ports { type ifname }                               # host veths
//	  set addrs { type ifname . ether_addr . ipv4_addr }      # veth . MAC . IPv4
//	  chain prerouting { type filter hook prerouting priority filter; policy accept;
//	    iifname @ports jump endpoint
//	  }
//	  chain endpoint {
//	    ether type ip iifname . ether saddr . ip saddr @addrs accept
//	    ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4
//	      iifname . ether saddr . arp saddr ip @addrs
//	      iifname . arp saddr ether . arp saddr ip @addrs accept
//	    counter drop
//	  }
//	}
//
// It has the eBPF endpoint program's semantics: a sandbox sends IPv4 only
// from its own address (0.0.0.0 included: no DHCP), frames only from its own
// MAC, ARP only with its own MAC and address as sender (probes with sender
// 0.0.0.0 are dropped too), and nothing else (no IPv6, no VLAN tags).
// Unlike the ip table it is never rebuilt per endpoint: each
// EnsureEndpoint/DeleteEndpoint adds or removes its two elements in one
// netlink batch, so setting up an endpoint costs the same at 1,000 of them.
// Sync checks the table and the elements, rebuilding the table if it was
// removed or changed and pruning elements of endpoints no longer there.
const (
	spoofPortsSet = "ports"
	spoofAddrsSet = "addrs"
	spoofChainPre = "prerouting"
	spoofChainEp  = "endpoint"
)

var (
	spoofTable = &nftables.Table{Name: plumb.NFTable, Family: nftables.TableFamilyBridge}
	spoofPorts = &nftables.Set{Table: spoofTable, ID: 1, Name: spoofPortsSet,
		KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian}
	spoofAddrs = &nftables.Set{Table: spoofTable, ID: 2, Name: spoofAddrsSet, Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr, nftables.TypeIPAddr)}
)

// spoofElem is what one endpoint may send from: its host veth (the bridge
// port its frames arrive on), its MAC and its IPv4 address.
type spoofElem struct {
	port string
	mac  [6]byte
	addr netip.Addr
}

// key is the addrs set key: each part padded to 4 bytes, as nftables
// concatenates registers.
func (e spoofElem) key() []byte {
	k := make([]byte, 0, ifNameBytes+8+4)
	k = append(k, ifname(e.port)...)
	k = append(k, e.mac[:]...)
	k = append(k, 0, 0)
	a := e.addr.As4()
	return append(k, a[:]...)
}

func (e spoofElem) String() string {
	return fmt.Sprintf("%s . %s . %s", e.port, net.HardwareAddr(e.mac[:]), e.addr)
}

func spoofElemFromKey(k []byte) (spoofElem, bool) {
	if len(k) != ifNameBytes+8+4 {
		return spoofElem{}, false
	}
	name := k[:ifNameBytes]
	if i := slices.Index(name, 0); i >= 0 {
		name = name[:i]
	}
	e := spoofElem{port: string(name), addr: netip.AddrFrom4([4]byte(k[ifNameBytes+8:]))}
	copy(e.mac[:], k[ifNameBytes:ifNameBytes+6])
	return e, true
}

// spoofRules are the two chains' rules.
func spoofRules() map[string][][]expr.Any {
	etherType := func(t uint16) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(t)},
		}
	}
	// lookup matches iifname . MAC at macOff (link layer or ARP) . IPv4
	// at ipOff of the network header in the addrs set (registers 8..14).
	lookup := func(macBase expr.PayloadBase, macOff, ipOff uint32) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 8},
			&expr.Payload{DestRegister: 12, Base: macBase, Offset: macOff, Len: 6},
			&expr.Payload{DestRegister: 14, Base: expr.PayloadBaseNetworkHeader, Offset: ipOff, Len: 4},
			&expr.Lookup{SourceRegister: 8, SetName: spoofAddrsSet, SetID: spoofAddrs.ID},
		}
	}
	accept := []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}
	arpEthIPv4 := []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 0, Len: 6},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 1, 8, 0, 6, 4}},
	}
	return map[string][][]expr.Any{
		spoofChainPre: {cat(lookupIif(spoofPortsSet), []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: spoofChainEp}})},
		spoofChainEp: {
			cat(etherType(0x0800), lookup(expr.PayloadBaseLLHeader, 6, 12), accept),
			cat(etherType(0x0806), arpEthIPv4,
				lookup(expr.PayloadBaseLLHeader, 6, 14),      // Ethernet source
				lookup(expr.PayloadBaseNetworkHeader, 8, 14), // ARP sender MAC
				accept),
			{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}},
		},
	}
}

// spoofElements are the set elements of elems.
func spoofElements(elems map[string]spoofElem) (ports, addrs []nftables.SetElement) {
	for _, port := range slices.Sorted(maps.Keys(elems)) {
		ports = append(ports, nftables.SetElement{Key: ifname(port)})
		addrs = append(addrs, nftables.SetElement{Key: elems[port].key()})
	}
	return ports, addrs
}

// spoofRebuild replaces the table with one holding elems, in one batch.
func (d *Datapath) spoofRebuild(elems map[string]spoofElem) error {
	c, err := d.batchConn()
	if err != nil {
		return fmt.Errorf("replace nftables table bridge %s: %w", plumb.NFTable, err)
	}
	c.AddTable(spoofTable)
	c.DelTable(spoofTable)
	c.AddTable(spoofTable)
	ports, addrs := spoofElements(elems)
	if err := addSet(c, spoofPorts, ports); err != nil {
		return fmt.Errorf("nftables set %s: %w", spoofPortsSet, err)
	}
	if err := addSet(c, spoofAddrs, addrs); err != nil {
		return fmt.Errorf("nftables set %s: %w", spoofAddrsSet, err)
	}
	pre := c.AddChain(&nftables.Chain{Name: spoofChainPre, Table: spoofTable, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(-200), Policy: new(nftables.ChainPolicyAccept)})
	ep := c.AddChain(&nftables.Chain{Name: spoofChainEp, Table: spoofTable})
	rules := spoofRules()
	for _, ch := range []*nftables.Chain{pre, ep} {
		for _, exprs := range rules[ch.Name] {
			c.AddRule(&nftables.Rule{Table: spoofTable, Chain: ch, Exprs: exprs})
		}
	}
	if err := c.Flush(); err != nil {
		d.spoofReady = false
		return fmt.Errorf("replace nftables table bridge %s: %w", plumb.NFTable, err)
	}
	d.spoof = maps.Clone(elems)
	d.spoofReady = true
	return nil
}

// spoofChange adds add and removes del (elements the table holds) in one
// batch. If that fails (the table was removed by hand), the table is
// rebuilt from d.spoof with the change applied.
func (d *Datapath) spoofChange(add, del []spoofElem) error {
	next := maps.Clone(d.spoof)
	for _, e := range del {
		delete(next, e.port)
	}
	for _, e := range add {
		next[e.port] = e
	}
	if !d.spoofReady {
		return d.spoofRebuild(next)
	}
	err := d.spoofBatch(add, del)
	if err == nil {
		d.spoof = next
		return nil
	}
	d.log.Warn("cannot change the anti-spoofing set; rebuilding the table", "err", err)
	return d.spoofRebuild(next)
}

// spoofSetElems is es as elements of the port set and of the address set.
func spoofSetElems(es []spoofElem) (ports, addrs []nftables.SetElement) {
	for _, e := range es {
		ports = append(ports, nftables.SetElement{Key: ifname(e.port)})
		addrs = append(addrs, nftables.SetElement{Key: e.key()})
	}
	return ports, addrs
}

func (d *Datapath) spoofBatch(add, del []spoofElem) error {
	c, err := d.batchConn()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if len(del) > 0 {
		ports, addrs := spoofSetElems(del)
		if err := errors.Join(inChunks(c.SetDeleteElements, spoofAddrs, addrs), inChunks(c.SetDeleteElements, spoofPorts, ports)); err != nil {
			return err
		}
	}
	if len(add) > 0 {
		ports, addrs := spoofSetElems(add)
		if err := errors.Join(inChunks(c.SetAddElements, spoofPorts, ports), inChunks(c.SetAddElements, spoofAddrs, addrs)); err != nil {
			return err
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("change nftables sets of table bridge %s: %w", plumb.NFTable, err)
	}
	return nil
}

// spoofElemOf is what ep may send from. Without ep.MAC, the MAC is the one
// last recorded for the same veth and address, or the sandbox side's own.
func (d *Datapath) spoofElemOf(ep datapath.Endpoint) (spoofElem, error) {
	e := spoofElem{port: ep.HostIfName, addr: ep.Addr.Addr().Unmap()}
	if len(ep.MAC) == 6 {
		e.mac = [6]byte(ep.MAC)
		return e, nil
	}
	if old, ok := d.spoof[e.port]; ok && old.addr == e.addr {
		return old, nil
	}
	sb, err := plumb.OpenSandbox(ep)
	if err != nil {
		return e, fmt.Errorf("endpoint %s: %w", ep.ID, err)
	}
	defer sb.Close()
	var mac net.HardwareAddr
	err = fabricns.Do(sb.FDPath(), func() error {
		ifi, err := net.InterfaceByName(ep.IfName)
		if err != nil {
			return fmt.Errorf("sandbox interface %s: %w", ep.IfName, err)
		}
		mac = ifi.HardwareAddr
		return nil
	})
	if err != nil {
		return e, fmt.Errorf("endpoint %s: %w", ep.ID, err)
	}
	if len(mac) != 6 {
		return e, fmt.Errorf("endpoint %s: %s has no Ethernet MAC (%s)", ep.ID, ep.IfName, mac)
	}
	e.mac = [6]byte(mac)
	return e, nil
}

// spoofEnsureEarly adds ep's elements before its veth exists, so the
// sandbox never has an unguarded port; without ep.MAC that waits for the
// sandbox side (spoofEnsure after the veth). undo puts back what was there
// before, for an EnsureEndpoint that fails later (if that fails too, the
// next Sync does it).
func (d *Datapath) spoofEnsureEarly(ep datapath.Endpoint) (undo func(), err error) {
	if len(ep.MAC) != 6 {
		return func() {}, nil
	}
	old, had := d.spoof[ep.HostIfName]
	if err := d.spoofEnsure(ep); err != nil {
		return nil, err
	}
	return func() {
		cur, ok := d.spoof[ep.HostIfName]
		if !ok || (had && cur == old) {
			return
		}
		var add []spoofElem
		if had {
			add = []spoofElem{old}
		}
		if err := d.spoofChange(add, []spoofElem{cur}); err != nil {
			d.log.Warn("cannot undo the anti-spoofing element", "endpoint", ep.ID, "err", err)
		}
	}, nil
}

// spoofEnsure lets ep send from its own MAC and address, and nothing
// else; a change of either replaces the old element. Without a change it
// touches nothing (Sync checks the table).
func (d *Datapath) spoofEnsure(ep datapath.Endpoint) error {
	e, err := d.spoofElemOf(ep)
	if err != nil {
		return err
	}
	delete(d.spoofRetired, e.port) // wanted again
	old, had := d.spoof[e.port]
	if had && old == e && d.spoofReady {
		return nil
	}
	var del []spoofElem
	if had {
		del = []spoofElem{old}
	}
	if err := d.spoofChange([]spoofElem{e}, del); err != nil {
		return fmt.Errorf("endpoint %s: anti-spoofing: %w", ep.ID, err)
	}
	return nil
}

// spoofDelete removes ep's elements.
func (d *Datapath) spoofDelete(ep datapath.Endpoint) error {
	old, had := d.spoof[ep.HostIfName]
	if !had {
		return nil
	}
	if err := d.spoofChange(nil, []spoofElem{old}); err != nil {
		return fmt.Errorf("endpoint %s: anti-spoofing: %w", ep.ID, err)
	}
	return nil
}

// spoofRestore adopts the table a previous run left: its elements become
// d.spoof, so the first EnsureEndpoint changes only its own elements.
func (d *Datapath) spoofRestore() error {
	intact, err := d.spoofIntact()
	if err != nil || !intact {
		return err
	}
	elems, err := d.spoofKernelElems()
	if err != nil {
		return err
	}
	d.spoof, d.spoofReady = elems, true
	return nil
}

// spoofIntact says whether the table has its sets, chains and rules.
func (d *Datapath) spoofIntact() (bool, error) {
	tables, err := d.nft.ListTablesOfFamily(nftables.TableFamilyBridge)
	if err != nil {
		return false, fmt.Errorf("list nftables tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == plumb.NFTable }) {
		return false, nil
	}
	sets, err := d.nft.GetSets(spoofTable)
	if err != nil {
		return false, fmt.Errorf("list sets of table bridge %s: %w", plumb.NFTable, err)
	}
	for _, name := range []string{spoofPortsSet, spoofAddrsSet} {
		if !slices.ContainsFunc(sets, func(s *nftables.Set) bool { return s.Name == name }) {
			return false, nil
		}
	}
	for name, want := range spoofRules() {
		rules, err := d.nft.GetRules(spoofTable, &nftables.Chain{Name: name, Table: spoofTable})
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				return false, nil
			}
			return false, fmt.Errorf("list chain %s of table bridge %s: %w", name, plumb.NFTable, err)
		}
		if len(rules) != len(want) {
			return false, nil
		}
		for i, r := range rules {
			if len(r.Exprs) != len(want[i]) || !sameVerdict(r.Exprs[len(r.Exprs)-1], want[i][len(want[i])-1]) {
				return false, nil
			}
		}
	}
	return true, nil
}

// sameVerdict compares two rules' last expressions, their verdicts.
func sameVerdict(got, want expr.Any) bool {
	g, ok1 := got.(*expr.Verdict)
	w, ok2 := want.(*expr.Verdict)
	return ok1 && ok2 && g.Kind == w.Kind && g.Chain == w.Chain
}

// spoofKernelElems reads the elements of the sets; a port in the ports
// set without exactly one addrs element, or the reverse, is returned with
// a zero address (the table is then rebuilt).
func (d *Datapath) spoofKernelElems() (map[string]spoofElem, error) {
	addrs, err := d.setElements(spoofAddrs)
	if err != nil {
		return nil, fmt.Errorf("read nftables set %s: %w", spoofAddrsSet, err)
	}
	ports, err := d.setElements(spoofPorts)
	if err != nil {
		return nil, fmt.Errorf("read nftables set %s: %w", spoofPortsSet, err)
	}
	out := map[string]spoofElem{}
	for _, p := range ports {
		name := p.Key
		if i := slices.Index(name, 0); i >= 0 {
			name = name[:i]
		}
		out[string(name)] = spoofElem{port: string(name)}
	}
	for _, a := range addrs {
		e, ok := spoofElemFromKey(a.Key)
		if !ok {
			continue
		}
		if old, ok := out[e.port]; !ok || old.addr.IsValid() {
			out[e.port] = spoofElem{port: e.port} // not in ports, or twice in addrs
			continue
		}
		out[e.port] = e
	}
	return out, nil
}

// syncSpoof brings the table to the bridge-network endpoints of a Sync:
// a table that is missing or changed is rebuilt (counted as a repair after
// the first Sync), a missing element added (a repair), an element no
// endpoint wants removed (stale).
func (d *Datapath) syncSpoof(p *syncPlan) []error {
	var errs []error
	want := map[string]spoofElem{}
	for _, ep := range p.Eps {
		n := p.Nets[ep.NetworkID]
		if plumb.UsesParent(n) || ep.HostIfName == "" {
			continue
		}
		e, err := d.spoofElemOf(ep)
		if err != nil {
			errs = append(errs, err)
			if old, ok := d.spoof[ep.HostIfName]; ok {
				want[old.port] = old // keep it rather than lift the check
			}
			continue
		}
		want[e.port] = e
	}
	// Retired elements go with this pass's change; they are no drift.
	retired := d.spoofTakeRetired()
	intact, err := d.spoofIntact()
	if err != nil {
		errs = append(errs, err)
	}
	var have map[string]spoofElem
	if intact {
		if have, err = d.spoofKernelElems(); err != nil {
			errs = append(errs, err)
			intact = false
		}
		// A port without exactly one addrs element: rebuilt, not patched.
		for _, e := range have {
			intact = intact && e.addr.IsValid()
		}
	}
	if !intact {
		if d.spoofSynced {
			d.repaired(datapath.RepairNFTables, "bridge "+plumb.NFTable)
		}
		if err := d.spoofRebuild(want); err != nil {
			return append(errs, err)
		}
		d.spoofSynced = true
		return errs
	}
	var add, del []spoofElem
	for _, port := range slices.Sorted(maps.Keys(have)) {
		if e := have[port]; want[port] != e {
			del = append(del, e)
			if _, ok := want[port]; !ok && retired[port] != e {
				d.repaired(datapath.RepairStale, "bridge "+plumb.NFTable+" element "+port)
			}
		}
	}
	for _, port := range slices.Sorted(maps.Keys(want)) {
		if have[port] != want[port] {
			add = append(add, want[port])
			if d.spoofSynced {
				d.repaired(datapath.RepairNFTables, "bridge "+plumb.NFTable+" element "+port)
			}
		}
	}
	d.spoof = have
	d.spoofReady = true
	if len(add)+len(del) > 0 {
		if err := d.spoofChange(add, del); err != nil {
			errs = append(errs, err)
		}
	}
	d.spoofSynced = true
	return errs
}
