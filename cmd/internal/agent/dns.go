package agent

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/dns"
	"github.com/fabricnet/fabric/datapath/netns"
)

// refreshDNS brings the whole embedded DNS table up to date (at start and
// after a resync): every endpoint answers to its sandbox's name and its
// aliases, on its network, and overlay networks carry the names of their
// remote endpoints. Records of sandboxes and endpoints on their way out are
// left out, so a name disappears the moment its removal starts.
//
// The table is updated per owner (a local endpoint, or the remote names of
// one overlay network), and only for owners whose records changed since
// they were last set (dnsRecords). A change to a few endpoints goes
// through refreshEndpointDNS instead, which does not walk the others: at
// 1,000 endpoints this walk took 0.8 ms per sandbox create.
func (a *Agent) refreshDNS() {
	if a.dns == nil {
		return
	}
	for _, ep := range a.endpoints {
		a.refreshEndpointDNS(ep)
	}
	for _, id := range a.names.endpointIDs() {
		if a.endpoints[id] == nil {
			a.names.setEndpoint(id, nil)
		}
	}
	a.refreshRemoteDNS()
}

// refreshEndpointDNS updates the names of the given endpoints only: those
// still present and not being removed (nor their sandbox) get their
// records, the others lose them.
func (a *Agent) refreshEndpointDNS(eps ...*endpointRec) {
	if a.dns == nil {
		return
	}
	for _, ep := range eps {
		sb, n := a.sandboxes[ep.Sandbox], a.networks[ep.NetworkID]
		if a.endpoints[ep.ID] != ep || sb == nil || n == nil || ep.Phase == phaseRemoving || sb.Phase == phaseRemoving {
			a.names.setEndpoint(ep.ID, nil)
			continue
		}
		if a.names.endpointIs(ep, sb.Name, n.ID) {
			continue
		}
		recs := make([]dns.Record, 0, 1+len(ep.Aliases))
		for _, name := range append([]string{sb.Name}, ep.Aliases...) {
			recs = append(recs, dns.Record{Name: name, Network: n.ID, IP: ep.Addr.Addr(), Sandbox: sb.Name})
		}
		a.names.setEndpoint(ep.ID, recs)
	}
}

// refreshRemoteDNS updates the names of remote endpoints, per overlay
// network, from what the cluster sync keeps in clusterGlue.
func (a *Agent) refreshRemoteDNS() {
	if a.dns == nil {
		return
	}
	a.names.setRemotes(a.glue.allNames(), a.log)
}

// updateForwarding tells the DNS server whether a sandbox may have names
// forwarded upstream: only if it is on at least one network that is not
// internal. A sandbox only on --internal networks has no way out, and
// upstream DNS must not become one.
func (a *Agent) updateForwarding(sb *sandboxRec) {
	if a.dns == nil || !hasResolver(sb) {
		return
	}
	a.dns.SetForwarding(sb.Name, a.primaryEndpoint(sb.Name) != nil)
}

// localRecordsAre says whether recs are exactly the records of a local
// endpoint ep of sandbox sandbox on network network.
func localRecordsAre(recs []dns.Record, sandbox, network string, ep *endpointRec) bool {
	if len(recs) != 1+len(ep.Aliases) {
		return false
	}
	for i, r := range recs {
		name := sandbox
		if i > 0 {
			name = ep.Aliases[i-1]
		}
		if r != (dns.Record{Name: name, Network: network, IP: ep.Addr.Addr(), Sandbox: sandbox}) {
			return false
		}
	}
	return true
}

// hasResolver says whether a sandbox gets the embedded DNS server: those
// with their own namespace and networks (none mode has no peers to find;
// host and container modes use another namespace's).
func hasResolver(sb *sandboxRec) bool {
	return sb.Mode == api.ModeNetNS || sb.Mode == api.ModeExternal
}

// attachDNS starts the sandbox's resolver at 127.0.0.11 inside its
// namespace and, for named sandboxes, writes the resolv.conf that
// `ip netns exec` and `fabricctl run` put in place of /etc/resolv.conf.
// A failure is logged and reported in status; the sandbox works without.
func (a *Agent) attachDNS(sb *sandboxRec) {
	if a.dns == nil || !hasResolver(sb) {
		return
	}
	a.updateForwarding(sb)
	if err := a.dns.Attach(sb.Name, sb.NetNS); err != nil {
		a.log.Warn("embedded DNS not available in sandbox", "sandbox", sb.Name, "err", err)
		a.names.setResolverError(sb.Name, err.Error())
		return
	}
	a.names.setResolverError(sb.Name, "")
	if sb.Mode != api.ModeNetNS {
		return
	}
	dir := filepath.Join(netns.EtcDir, sandboxNSName(sb))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		a.log.Warn("write sandbox resolv.conf", "sandbox", sb.Name, "err", err)
		return
	}
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), dns.ResolvConf(hostSearchDomains()), 0o644); err != nil {
		a.log.Warn("write sandbox resolv.conf", "sandbox", sb.Name, "err", err)
	}
}

// detachDNS stops the sandbox's resolver and removes its resolv.conf.
func (a *Agent) detachDNS(sb *sandboxRec) {
	if a.dns == nil {
		return
	}
	a.dns.Detach(sb.Name)
	a.dns.SetForwarding(sb.Name, true) // forget it
	a.names.setResolverError(sb.Name, "")
	if sb.Mode == api.ModeNetNS {
		_ = os.RemoveAll(filepath.Join(netns.EtcDir, sandboxNSName(sb)))
	}
}

// hostSearchDomains returns the search domains of the host's resolv.conf,
// which sandboxes inherit (as Docker's containers do).
func hostSearchDomains() []string {
	f, err := os.Open("/etc/resolv.conf")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 1 && (fields[0] == "search" || fields[0] == "domain") {
			out = fields[1:]
		}
	}
	return out
}

// dnsStatus summarises the embedded DNS server for status.
func (a *Agent) dnsStatus() *api.DNSStatus {
	if a.dns == nil {
		return nil
	}
	st := a.dns.Stats()
	ignored, errs := a.names.problems()
	out := &api.DNSStatus{
		Resolvers: st.Attached, Records: st.Records, Upstreams: st.Upstreams,
		Local: st.Local, NXDomain: st.NXDomain, Forwarded: st.Forwarded, Failed: st.ForwardFailed,
		Malformed: st.Malformed + st.Refused, IgnoredNames: ignored, Errors: errs,
	}
	if st.UpstreamCount > 0 {
		out.UpstreamAvg = (st.UpstreamSum / time.Duration(st.UpstreamCount)).Round(time.Microsecond).String()
	}
	return out
}
