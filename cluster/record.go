package cluster

// writer is the node that wrote r and signed it.
func (r record) writer() string {
	switch {
	case r.net != nil && r.net.Deleted:
		return r.net.DelVer.Node
	case r.net != nil:
		return r.net.Net.ID.Node
	case r.ep != nil:
		return r.ep.Ver.Node
	case r.lease != nil:
		return r.lease.Ver.Node
	case r.claim != nil:
		return r.claim.Ver.Node
	}
	return ""
}

// sig points at r's signature.
func (r record) sig() *[]byte {
	switch {
	case r.net != nil:
		return &r.net.Sig
	case r.ep != nil:
		return &r.ep.Sig
	case r.lease != nil:
		return &r.lease.Sig
	case r.claim != nil:
		return &r.claim.Sig
	}
	return new([]byte)
}

// clocks returns every lamport clock r carries, to bound them.
func (r record) clocks() []uint64 {
	switch {
	case r.net != nil && r.net.Deleted:
		return []uint64{r.net.Net.ID.Clock, r.net.DelVer.Clock, r.net.Winner.Clock}
	case r.net != nil:
		return []uint64{r.net.Net.ID.Clock}
	case r.ep != nil:
		return []uint64{r.ep.Ver.Clock}
	case r.lease != nil:
		return []uint64{r.lease.Ver.Clock, r.lease.Net.Clock}
	case r.claim != nil:
		return []uint64{r.claim.Ver.Clock, r.claim.Net.Clock}
	}
	return nil
}
