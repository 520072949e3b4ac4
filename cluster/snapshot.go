package cluster

import (
	"fmt"
	"net/netip"
	"time"
)

// Snapshot returns the replicated state and this node's allocations, for
// the agent to persist and hand to Restore after a restart.
func (c *Cluster) Snapshot() ([]byte, error) {
	var snap snapshot
	c.mu.Lock()
	snap = snapshot{Node: c.st.self, Clock: c.st.clock, Version: c.st.version, Taken: time.Now().Unix(), Records: c.st.records()}
	for k, owner := range c.st.allocs {
		snap.Allocs = append(snap.Allocs, alloc{Net: k.Net, IP: k.IP, Owner: owner})
	}
	c.mu.Unlock()
	b := encodeMessage(message{Type: msgSnapshot, Snapshot: &snap})
	if len(b) > maxStateBytes {
		return nil, fmt.Errorf("%w: snapshot of %d bytes exceeds %d", ErrInvalid, len(b), maxStateBytes)
	}
	return b, nil
}

// Restore merges a snapshot taken by this node (same name) into the state,
// as if it had been received from a peer, and takes back the allocations
// that are still in its blocks. Newer records, from peers or local, win.
func (c *Cluster) Restore(b []byte) error {
	m, err := decodeMessage(b)
	if err != nil {
		return fmt.Errorf("restore: %w: %w", ErrInvalid, err)
	}
	if m.Type != msgSnapshot {
		return fmt.Errorf("restore: %w: not a snapshot", ErrInvalid)
	}
	snap := m.Snapshot
	if snap.Node != c.cfg.NodeName {
		return fmt.Errorf("restore: %w: snapshot of node %q, this is %q", ErrInvalid, snap.Node, c.cfg.NodeName)
	}
	// The snapshot is this node's own file: its records are taken as they
	// are (only the bounds of limits.go apply), and those it wrote are
	// signed again, in case its identity key changed since.
	auth := make([]authResult, len(snap.Records))
	for i := range snap.Records {
		r := snap.Records[i]
		if r.writer() == c.cfg.NodeName {
			c.signRecord(&r)
		}
		auth[i] = authNone
	}
	return c.locked(func(s *state) error {
		s.merge(snap.Clock, snap.Records, auth)
		for _, a := range snap.Allocs {
			if s.ownsAddr(a.Net, a.IP) {
				s.allocs[claimKey{Net: a.Net, IP: a.IP}] = a.Owner
			}
		}
		s.version = max(s.version, snap.Version) + 1
		return nil
	})
}

// ownsAddr reports whether ip is in one of this node's blocks or claims.
func (s *state) ownsAddr(id NetworkID, ip netip.Addr) bool {
	if e := s.claims[claimKey{Net: id, IP: ip}]; e != nil && !e.rec.Deleted && e.rec.Node == s.self {
		return true
	}
	for k, e := range s.leases {
		if k.Net == id && k.Block.Contains(ip) && !e.rec.Deleted && e.rec.Node == s.self {
			return true
		}
	}
	return false
}
