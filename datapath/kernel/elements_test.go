package kernel

import (
	"testing"

	"github.com/google/nftables"
)

func TestUniqueElements(t *testing.T) {
	el := func(key, end string, intervalEnd bool) nftables.SetElement {
		return nftables.SetElement{Key: []byte(key), KeyEnd: []byte(end), IntervalEnd: intervalEnd}
	}
	for _, tc := range []struct {
		name string
		in   []nftables.SetElement
		want []nftables.SetElement
	}{
		{"none", nil, nil},
		{"distinct", []nftables.SetElement{el("a", "", false), el("b", "", false)}, []nftables.SetElement{el("a", "", false), el("b", "", false)}},
		{"repeated key dropped, order kept", []nftables.SetElement{el("b", "", false), el("a", "", false), el("b", "", false)}, []nftables.SetElement{el("b", "", false), el("a", "", false)}},
		{"same key, other range end", []nftables.SetElement{el("a", "x", false), el("a", "y", false)}, []nftables.SetElement{el("a", "x", false), el("a", "y", false)}},
		{"interval start and end apart", []nftables.SetElement{el("a", "", false), el("a", "", true), el("a", "", true)}, []nftables.SetElement{el("a", "", false), el("a", "", true)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := uniqueElements(tc.in)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d elements %v, want %v", len(got), got, tc.want)
			}
			for i := range got {
				if string(got[i].Key) != string(tc.want[i].Key) || string(got[i].KeyEnd) != string(tc.want[i].KeyEnd) || got[i].IntervalEnd != tc.want[i].IntervalEnd {
					t.Errorf("element %d: %+v, want %+v", i, got[i], tc.want[i])
				}
			}
		})
	}
}
