package cluster

import (
	"context"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
)

// vniBase keeps picked VNIs clear of small, hand-picked ones.
const vniBase = 4096

// createNetwork writes a local create after checking it against the
// accepted networks this node knows.
func (s *state) createNetwork(spec NetworkSpec) (Network, error) {
	if err := spec.normalize(); err != nil {
		return Network{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if spec.VNI == 0 {
		spec.VNI = s.pickVNI(spec.Name)
	}
	for _, id := range s.accepted {
		other := s.networks[id].rec.Net
		if why := spec.clashes(&other.NetworkSpec); why != "" {
			return Network{}, fmt.Errorf("%w: network %q (%s) clashes with existing network %q (%s, VNI %d): %s",
				ErrConflict, spec.Name, spec.Subnet, other.Name, other.Subnet, other.VNI, why)
		}
	}
	n := Network{ID: NetworkID(s.tick()), NetworkSpec: spec}
	r := record{net: &netRecord{Net: n.clone()}}
	if size := len(encodeMessage(message{Type: msgRecord, Record: &r})); size > maxBroadcastBytes {
		return Network{}, fmt.Errorf("%w: network %q: record of %d bytes does not fit a gossip packet (%d); use fewer or shorter options",
			ErrInvalid, spec.Name, size, maxBroadcastBytes)
	}
	s.apply(r)
	return n, nil
}

// pickVNI derives a VNI from the name and probes past taken ones, so that a
// VNI clash between two concurrent creates is as unlikely as a hash clash.
func (s *state) pickVNI(name string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(name))
	span := uint32(maxVNI - vniBase)
	v := h.Sum32() % span
	taken := make(map[uint32]bool)
	for _, e := range s.networks {
		if !e.rec.Deleted {
			taken[e.rec.Net.VNI] = true
		}
	}
	for taken[vniBase+v] {
		v = (v + 1) % span
	}
	return vniBase + v
}

// proposal answers a network proposed by another node: whether it is
// accepted here, and if not, why and the record that beat it, so the
// proposer learns the winner at once (and, as the origin, tombstones its
// create).
func (s *state) proposal(r *netRecord, auth authResult) (ok bool, reason string, decisive []record) {
	if why := s.remote(record{net: r}, true, auth); why != "" {
		return false, fmt.Sprintf("network %q refused: %s", r.Net.Name, why), nil
	}
	e := s.networks[r.Net.ID]
	if e == nil || s.accepted[r.Net.Name] == r.Net.ID {
		return true, "", nil
	}
	if e.rec.Deleted {
		tomb := e.rec
		return false, fmt.Sprintf("network %q was removed", r.Net.Name), []record{{net: &tomb}}
	}
	for _, id := range s.accepted {
		w := s.networks[id]
		if why := r.Net.clashes(&w.rec.Net.NetworkSpec); why != "" && id.less(r.Net.ID) {
			win := w.rec
			return false, fmt.Sprintf("network %q (%s) clashes with network %q (%s, VNI %d, created on %s first): %s",
				r.Net.Name, r.Net.Subnet, w.rec.Net.Name, w.rec.Net.Subnet, w.rec.Net.VNI, w.rec.Net.ID.Node, why), []record{{net: &win}}
		}
	}
	return true, "", nil
}

// CreateNetwork creates a cluster-scoped network. It is checked against
// the networks this node knows, then proposed to every member, which
// answers whether it clashes with a create it has seen. A clash is decided
// by the rule in the package comment: the create with the lower (lamport
// clock, node name) wins everywhere. The loser gets ErrConflict here, or,
// if the clash is found later (after a partition), EventNetworkConflict.
func (c *Cluster) CreateNetwork(ctx context.Context, spec NetworkSpec) (Network, error) {
	var n Network
	var signed netRecord
	if err := c.locked(func(s *state) (err error) {
		if n, err = s.createNetwork(spec); err == nil {
			signed = s.networks[n.ID].rec
			signed.Net = signed.Net.clone()
		}
		return err
	}); err != nil {
		return Network{}, fmt.Errorf("create network: %w", err)
	}
	resps, missing := c.call(ctx, c.peers(), request{Op: opPropose, Net: &signed})
	var refusals []string
	for _, r := range resps {
		if !r.OK {
			refusals = append(refusals, r.Reason)
		}
	}
	var lost *netRecord
	_ = c.locked(func(s *state) error {
		if e := s.networks[n.ID]; e != nil && e.rec.Deleted {
			r := e.rec
			lost = &r
		}
		return nil
	})
	slices.Sort(refusals)
	switch {
	case lost != nil && lost.Reason == reasonRemoved:
		return Network{}, fmt.Errorf("create network: %w: %q was removed concurrently", ErrNotFound, n.Name)
	case lost != nil || len(refusals) > 0:
		reason := "clashes with a concurrent create"
		if len(refusals) > 0 {
			reason = refusals[0]
		}
		return Network{}, fmt.Errorf("create network: %w: %s", ErrConflict, reason)
	}
	if len(missing) > 0 {
		c.log.Warn("network created, but some members did not confirm; they will learn it by gossip", "network", n.Name, "missing", missing)
	}
	return n, nil
}

// RemoveNetwork removes a network cluster-wide. It is refused while
// endpoints are published on it.
func (c *Cluster) RemoveNetwork(name string) error {
	return c.locked(func(s *state) error {
		id, ok := s.accepted[name]
		if !ok {
			return fmt.Errorf("remove network: %w: no network %q", ErrNotFound, name)
		}
		var users []string
		for _, e := range s.endpoints {
			if !e.rec.Deleted && e.rec.EP.Network == name {
				users = append(users, e.rec.EP.ID+"@"+e.rec.EP.Node)
			}
		}
		if len(users) > 0 {
			slices.Sort(users)
			return fmt.Errorf("remove network: %w: network %q has %d endpoints (%s); disconnect them first",
				ErrInUse, name, len(users), users[0])
		}
		r := s.networks[id].rec
		r.Net = r.Net.clone()
		r.Deleted, r.DelVer, r.Reason = true, s.tick(), reasonRemoved
		s.apply(record{net: &r})
		return nil
	})
}

// Networks returns the accepted networks, sorted by name.
func (c *Cluster) Networks() []Network {
	var out []Network
	_ = c.locked(func(s *state) error {
		for _, id := range s.accepted {
			out = append(out, s.networks[id].rec.Net.clone())
		}
		return nil
	})
	slices.SortFunc(out, func(a, b Network) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Network returns one accepted network.
func (c *Cluster) Network(name string) (Network, error) {
	var n Network
	err := c.locked(func(s *state) error {
		id, ok := s.accepted[name]
		if !ok {
			return fmt.Errorf("%w: no network %q", ErrNotFound, name)
		}
		n = s.networks[id].rec.Net.clone()
		return nil
	})
	return n, err
}

func (c *Cluster) networkID(name string) (NetworkID, error) {
	n, err := c.Network(name)
	return n.ID, err
}
