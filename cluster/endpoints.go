package cluster

import (
	"fmt"
	"slices"
	"strings"
)

// Publish announces an endpoint of this node to the cluster (Node is set to
// this node). Publishing the same endpoint again changes nothing;
// publishing it with changed fields replaces the old record everywhere,
// since the newer version wins.
func (c *Cluster) Publish(ep Endpoint) error {
	ep = ep.clone()
	ep.Node = c.cfg.NodeName
	if err := ep.validate(); err != nil {
		return fmt.Errorf("publish endpoint: %w: %w", ErrInvalid, err)
	}
	if size := len(encodeMessage(message{Type: msgRecord, Record: &record{ep: &epRecord{Ver: version{Clock: 1 << 62, Node: ep.Node}, EP: ep}}})); size > maxBroadcastBytes {
		return fmt.Errorf("publish endpoint: %w: record of %d bytes does not fit a gossip packet (%d); use fewer or shorter aliases",
			ErrInvalid, size, maxBroadcastBytes)
	}
	return c.locked(func(s *state) error { return s.publish(ep) })
}

func (s *state) publish(ep Endpoint) error {
	id, ok := s.accepted[ep.Network]
	if !ok {
		return fmt.Errorf("publish endpoint %s: %w: no network %q", ep.ID, ErrNotFound, ep.Network)
	}
	if subnet := s.networks[id].rec.Net.Subnet; !subnet.Contains(ep.IP) {
		return fmt.Errorf("publish endpoint %s: %w: %s is outside %s of network %q", ep.ID, ErrInvalid, ep.IP, subnet, ep.Network)
	}
	if cur := s.endpoints[ep.ID]; cur != nil && !cur.rec.Deleted {
		if cur.rec.EP.Node != s.self {
			return fmt.Errorf("publish endpoint %s: %w: it is published by node %s", ep.ID, ErrConflict, cur.rec.EP.Node)
		}
		if cur.rec.EP.equal(ep) {
			s.published[ep.ID] = ep
			return nil
		}
	}
	s.published[ep.ID] = ep
	s.writeEndpoint(ep, false)
	return nil
}

// Unpublish withdraws an endpoint of this node.
func (c *Cluster) Unpublish(id string) error {
	return c.locked(func(s *state) error {
		delete(s.published, id)
		cur := s.endpoints[id]
		if cur == nil || cur.rec.Deleted || cur.rec.EP.Node != s.self {
			return fmt.Errorf("unpublish endpoint: %w: %s is not published by %s", ErrNotFound, id, s.self)
		}
		s.writeEndpoint(cur.rec.EP, true)
		return nil
	})
}

// SyncEndpoints declares the complete set of this node's endpoints, e.g.
// after an agent restart: it publishes them and withdraws every other
// record of this node, including ones that arrive later from members that
// still remember them. Errors for single endpoints are joined; the others
// are still published.
func (c *Cluster) SyncEndpoints(eps []Endpoint) error {
	var errs []string
	keep := make(map[string]bool, len(eps))
	for _, ep := range eps {
		keep[ep.ID] = true
		if err := c.Publish(ep); err != nil {
			errs = append(errs, err.Error())
		}
	}
	_ = c.locked(func(s *state) error {
		s.synced = true
		for id := range s.published {
			if !keep[id] {
				delete(s.published, id)
			}
		}
		for _, e := range s.endpoints {
			if !e.rec.Deleted && e.rec.EP.Node == s.self && !keep[e.rec.EP.ID] {
				s.writeEndpoint(e.rec.EP, true)
			}
		}
		return nil
	})
	if len(errs) > 0 {
		return fmt.Errorf("sync endpoints: %w: %s", ErrInvalid, strings.Join(errs, "; "))
	}
	return nil
}

// Endpoints returns the live endpoint records of a network, or of all
// networks for "", sorted by ID.
func (c *Cluster) Endpoints(network string) []Endpoint {
	var out []Endpoint
	_ = c.locked(func(s *state) error {
		for _, e := range s.endpoints {
			if !e.rec.Deleted && (network == "" || e.rec.EP.Network == network) {
				out = append(out, e.rec.EP.clone())
			}
		}
		return nil
	})
	slices.SortFunc(out, func(a, b Endpoint) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Endpoint returns one live endpoint record.
func (c *Cluster) Endpoint(id string) (Endpoint, error) {
	var ep Endpoint
	err := c.locked(func(s *state) error {
		e := s.endpoints[id]
		if e == nil || e.rec.Deleted {
			return fmt.Errorf("%w: no endpoint %s", ErrNotFound, id)
		}
		ep = e.rec.EP.clone()
		return nil
	})
	return ep, err
}
