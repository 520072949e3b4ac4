package agent

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"

	"github.com/fabricnet/fabric/cmd/internal/dns"
)

// dnsRecords is the agent's side of the embedded DNS server's table: the
// records it last set per owner (a local endpoint, or the remote names of
// one overlay network), the gossiped names it refused, and the sandboxes
// whose resolver is not running. It has its own lock, so status reads it
// while the agent lock is held by a slow change; the calls it makes into
// the DNS server only update the server's in-memory table.
type dnsRecords struct {
	srv *dns.Server // nil: no embedded DNS

	mu       sync.Mutex
	ep       map[string][]dns.Record // endpoint ID → its records as last set
	net      map[string][]dns.Record // overlay network ID → its remote names as last set
	badNames map[string]struct{}     // gossiped names ignored (not one label), logged once
	badCount uint64                  // distinct gossiped names ignored
	errors   map[string]string       // sandbox → why its resolver is not running
}

func newDNSRecords(srv *dns.Server) *dnsRecords {
	return &dnsRecords{
		srv: srv, ep: map[string][]dns.Record{}, net: map[string][]dns.Record{},
		badNames: map[string]struct{}{}, errors: map[string]string{},
	}
}

// endpointIDs lists the endpoints that have records.
func (d *dnsRecords) endpointIDs() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Collect(maps.Keys(d.ep))
}

// endpointIs says whether the records of endpoint ep are exactly those of
// its sandbox's name and aliases on network.
func (d *dnsRecords) endpointIs(ep *endpointRec, sandbox, network string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return localRecordsAre(d.ep[ep.ID], sandbox, network, ep)
}

// setEndpoint replaces the records of endpoint id (none: removes them).
func (d *dnsRecords) setEndpoint(id string, recs []dns.Record) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.setLocked(d.ep, "ep/", id, recs)
}

// setRemotes makes the remote names of every overlay network those of
// names (network ID → records), without the names that are not one label.
func (d *dnsRecords) setRemotes(names map[string][]dns.Record, log *slog.Logger) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for id, recs := range names {
		recs = d.validLocked(recs, log)
		if !slices.Equal(d.net[id], recs) {
			d.setLocked(d.net, "net/", id, recs)
		}
	}
	for id := range d.net {
		if _, ok := names[id]; !ok {
			d.setLocked(d.net, "net/", id, nil)
		}
	}
}

// remoteNames returns the remote names set for overlay network id.
func (d *dnsRecords) remoteNames(id string) []dns.Record {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.net[id])
}

// validLocked returns a copy of gossiped names without those that are not
// one DNS label (another node, or a forged record, naming a sandbox or
// alias github.com). Each such name is logged once and counted in the
// status.
func (d *dnsRecords) validLocked(names []dns.Record, log *slog.Logger) []dns.Record {
	out := make([]dns.Record, 0, len(names))
	for _, r := range names {
		if err := dns.ValidLabel(r.Name); err != nil {
			if _, seen := d.badNames[r.Name]; !seen {
				d.badCount++
				if len(d.badNames) < maxBadNames {
					d.badNames[r.Name] = struct{}{}
				}
				log.Warn("ignoring a gossiped DNS name that is not one label", "name", r.Name, "ip", r.IP, "err", err)
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// maxBadNames bounds the memory of bad gossiped names already logged and
// counted (beyond it a name may be logged and counted again).
const maxBadNames = 1024

// setLocked replaces the records of one owner (kind and id) in the table
// and remembers them in set.
func (d *dnsRecords) setLocked(set map[string][]dns.Record, kind, id string, recs []dns.Record) {
	if len(recs) == 0 {
		if _, ok := set[id]; !ok {
			return
		}
		delete(set, id)
	} else {
		set[id] = recs
	}
	if d.srv != nil {
		d.srv.SetRecords(kind+id, recs)
	}
}

// setResolverError notes why sandbox's resolver is not running ("": it is).
func (d *dnsRecords) setResolverError(sandbox, why string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if why == "" {
		delete(d.errors, sandbox)
		return
	}
	d.errors[sandbox] = why
}

// resolverFailed says whether sandbox's resolver is not running.
func (d *dnsRecords) resolverFailed(sandbox string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.errors[sandbox] != ""
}

// problems returns the count of ignored gossiped names and, per sandbox,
// why its resolver is not running.
func (d *dnsRecords) problems() (ignored uint64, errs []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for name, why := range d.errors {
		errs = append(errs, fmt.Sprintf("sandbox %s: %s", name, why))
	}
	return d.badCount, errs
}
