package cluster

import (
	"bytes"
	"net"
	"testing"

	"github.com/hashicorp/memberlist"
)

// memberlist asks NotifyAlive about every alive message and every entry of
// every full-state exchange; for a member already known with the same
// metadata that must cost no decoding (no allocation), and anything else
// must still be checked.
func TestNotifyAliveKnownMetadataIsCheap(t *testing.T) {
	members := startCluster(t, 2)
	a, b := members[0], members[1]
	d := &aliveDelegate{a}
	meta := bytes.Clone(*b.meta.Load())
	node := memberlist.Node{Name: b.Name(), Addr: net.IP(b.Addr().Addr().AsSlice()), Port: b.Addr().Port(), Meta: meta}
	if err := d.NotifyAlive(&node); err != nil {
		t.Fatalf("the live member's own metadata refused: %v", err)
	}
	if allocs := testing.AllocsPerRun(100, func() { _ = d.NotifyAlive(&node) }); allocs != 0 {
		t.Fatalf("NotifyAlive for known metadata allocates %.0f times (decodes it again)", allocs)
	}

	// Another identity key under the live member's name is still refused.
	other := bytes.Clone(meta)
	other[len(other)-1] ^= 1
	forged := node
	forged.Meta = other
	if err := d.NotifyAlive(&forged); err == nil {
		t.Fatal("metadata with another identity key accepted for a live member")
	}
	// So is metadata that does not decode, and this node's name with a
	// key that is not this node's.
	forged.Meta = append(bytes.Clone(meta), 0)
	if err := d.NotifyAlive(&forged); err == nil {
		t.Fatal("metadata with trailing bytes accepted")
	}
	self := memberlist.Node{Name: a.Name(), Meta: meta}
	if err := d.NotifyAlive(&self); err == nil {
		t.Fatal("another key accepted under this node's own name")
	}
}
