package kernel

import (
	"github.com/google/nftables"
)

// setElements reads a set's or map's elements, each key once. A set holds
// each key once, but its dump is not a snapshot: the kernel walks a hash
// set's table in several netlink messages, and when the table is resized
// between them (right after many elements went in, the resize runs
// later, in a worker) the walk can return an element twice. A repeated key
// is such an artifact; counting it would make an intact table look
// changed and rebuild it.
func (d *Datapath) setElements(set *nftables.Set) ([]nftables.SetElement, error) {
	elems, err := d.nft.GetSetElements(set)
	if err != nil {
		return nil, err
	}
	return uniqueElements(elems), nil
}

// uniqueElements drops the later copies of a key (with its range end, for
// interval sets), keeping the order.
func uniqueElements(elems []nftables.SetElement) []nftables.SetElement {
	seen := make(map[string]bool, len(elems))
	out := elems[:0:0]
	for _, e := range elems {
		k := string(e.Key) + "\x00" + string(e.KeyEnd)
		if e.IntervalEnd {
			k += "\x00end"
		}
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, e)
	}
	return out
}
