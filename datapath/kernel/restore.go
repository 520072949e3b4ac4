package kernel

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/google/nftables"

	"github.com/fabricnet/fabric/datapath"
)

// The rules and elements that carry state (a rule per network in
// postrouting, an element per published port in the port maps) have a JSON comment describing what they
// were generated from. A restarted datapath reads them back, so its first
// rebuild keeps the rules of objects the agent has not re-ensured yet, and
// `nft list table ip fabric` tells an operator which endpoint a rule is for.

// maxComment is what fits in a rule's userdata (256 bytes) after the
// comment's type, length and NUL. Longer comments are left out: the rule
// still works, it only cannot be adopted after a restart.
const maxComment = 253

type netComment struct {
	Net      string       `json:"net"`
	Bridge   string       `json:"br"`
	Subnet   netip.Prefix `json:"subnet"`
	Internal bool         `json:"internal,omitempty"`
}

type portComment struct {
	Endpoint string     `json:"ep"`
	Net      string     `json:"net"`
	Addr     netip.Addr `json:"addr"`
	Proto    string     `json:"proto"`
	HostIP   netip.Addr `json:"hostip,omitzero"`
	HostPort uint16     `json:"hostport"`
	Port     uint16     `json:"port"`
}

// portEntry is one published port with the endpoint it leads to.
type portEntry struct {
	endpoint string
	network  string
	addr     netip.Addr
	mapping  datapath.PortMapping
}

func sortedPorts(s desired) []portEntry {
	ids := slices.Sorted(maps.Keys(s.ports))
	var out []portEntry
	for _, id := range ids {
		ep := s.ports[id]
		for _, m := range ep.Ports {
			out = append(out, portEntry{endpoint: id, network: ep.NetworkID, addr: ep.Addr, mapping: m})
		}
	}
	return out
}

func encodeNetComment(n netState) string {
	return encodeComment(netComment{Net: n.ID, Bridge: n.Bridge, Subnet: n.Subnet, Internal: n.Internal})
}

func encodePortComment(p portEntry) string {
	return encodeComment(portComment{
		Endpoint: p.endpoint, Net: p.network, Addr: p.addr,
		Proto: p.mapping.Proto, HostIP: p.mapping.HostIP, HostPort: p.mapping.HostPort, Port: p.mapping.Port,
	})
}

func encodeComment(v any) string {
	b, err := json.Marshal(v)
	if err != nil || len(b) > maxComment {
		return ""
	}
	return string(b)
}

// ruleComment extracts the comment from nftables rule userdata (a list of
// type-length-value records; type 0 is the comment, NUL-terminated).
func ruleComment(ud []byte) (string, bool) {
	for len(ud) >= 2 {
		typ, n := ud[0], int(ud[1])
		if len(ud) < 2+n {
			return "", false
		}
		if typ == 0 {
			s := ud[2 : 2+n]
			if len(s) > 0 && s[len(s)-1] == 0 {
				s = s[:len(s)-1]
			}
			return string(s), true
		}
		ud = ud[2+n:]
	}
	return "", false
}

// restoreState reads the desired state back from the table a previous run
// left. No table means an empty state.
func (d *Datapath) restoreState() (desired, error) {
	s := newDesired()
	chains, err := d.nft.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return s, fmt.Errorf("list nftables chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table.Name != tableName || (ch.Name != chainPre && ch.Name != chainPost) {
			continue
		}
		rules, err := d.nft.GetRules(table, ch)
		if err != nil {
			return newDesired(), fmt.Errorf("list rules of %s: %w", ch.Name, err)
		}
		for _, r := range rules {
			c, ok := ruleComment(r.UserData)
			if !ok || c == "" {
				continue
			}
			if ch.Name == chainPost {
				var nc netComment
				if json.Unmarshal([]byte(c), &nc) == nil && nc.Net != "" {
					s.networks[nc.Net] = netState{ID: nc.Net, Bridge: nc.Bridge, Subnet: nc.Subnet, Internal: nc.Internal}
				}
				continue
			}
			// A table from before the port maps had a rule per port.
			var pc portComment
			if json.Unmarshal([]byte(c), &pc) != nil || pc.Endpoint == "" {
				continue
			}
			adoptPort(&s, pc)
		}
	}
	d.restorePortMaps(&s)
	if len(s.networks) > 0 || len(s.ports) > 0 {
		d.log.Info("adopted nftables table", "networks", len(s.networks), "endpoints with ports", len(s.ports))
	}
	return s, nil
}
