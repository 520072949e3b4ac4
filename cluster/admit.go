package cluster

// authResult is what checking a remote record's signature found.
type authResult int

const (
	authNone    authResult = iota // not checked (tests of the state alone)
	authOK                        // signed by its writer, whose key is known here
	authUnknown                   // the writer's key is not known here
	authBad                       // the signature does not match the writer's key
)

// remote merges a record received from another node, after the checks of
// limits.go and identity.go; it returns why it was dropped, or "". A
// change is queued for (re)broadcast when rebroadcast is set: every node
// passes on what is new to it, which is how a change reaches members the
// originator's gossip missed.
func (s *state) remote(r record, rebroadcast bool, auth authResult) string {
	why := ""
	switch {
	case auth == authBad:
		why = dropBadSignature
	case r.writer() == s.self && auth != authOK && auth != authNone:
		why = dropBadSignature // nobody else writes in this node's name
	default:
		why = s.admit(r)
	}
	if why == "" && auth == authUnknown && s.displaces(r) {
		why = dropDisplace
	}
	if why != "" {
		s.rejected(why)
		return why
	}
	s.applyFrom(r, rebroadcast)
	return ""
}

// displaces reports whether r would replace something written by another
// node, or (a network create) win a clash against an accepted network.
// Records whose writer this node cannot check may only fill gaps.
func (s *state) displaces(r record) bool {
	switch {
	case r.net != nil && r.net.Deleted:
		cur := s.networks[r.net.Net.ID]
		return cur != nil && !cur.rec.Deleted
	case r.net != nil:
		for _, id := range s.accepted {
			if id != r.net.Net.ID && r.net.Net.clashes(&s.networks[id].rec.Net.NetworkSpec) != "" {
				return true
			}
		}
		return false
	case r.ep != nil:
		cur := s.endpoints[r.ep.EP.ID]
		return cur != nil && cur.rec.Ver.Node != r.ep.Ver.Node
	case r.lease != nil:
		cur := s.leases[leaseKey{Net: r.lease.Net, Block: r.lease.Block}]
		return cur != nil && cur.rec.Ver.Node != r.lease.Ver.Node
	case r.claim != nil:
		cur := s.claims[claimKey{Net: r.claim.Net, IP: r.claim.IP}]
		return cur != nil && cur.rec.Ver.Node != r.claim.Ver.Node
	}
	return false
}

// applyFrom is apply; records from a push/pull or a snapshot are not passed
// on (rebroadcast false), since the peer they came from already has them
// and gossiping a whole state would flood the queue. Changes they cause
// here (a re-asserted endpoint, a conflict tombstone) are still broadcast.
func (s *state) applyFrom(r record, rebroadcast bool) bool {
	var changed bool
	switch {
	case r.net != nil:
		s.witness(r.net.Net.ID.Clock)
		if r.net.Deleted {
			s.witness(r.net.DelVer.Clock)
		}
		changed = s.applyNet(*r.net)
	case r.ep != nil:
		s.witness(r.ep.Ver.Clock)
		changed = s.applyEndpoint(*r.ep)
	case r.lease != nil:
		s.witness(r.lease.Ver.Clock)
		changed = s.applyLease(*r.lease)
	case r.claim != nil:
		s.witness(r.claim.Ver.Clock)
		changed = s.applyClaim(*r.claim)
	}
	if changed {
		s.version++
		if rebroadcast {
			s.out = append(s.out, r)
		}
	}
	return changed
}
