package plumb

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath"
)

// fakeLinks is a host namespace as far as VLAN parents are concerned,
// with the kernel's rules for them: one VID per base, a VLAN up only with
// its base up, renaming only while down, VLANs gone with their base. It
// lets the VLAN logic be tested on kernels built without 802.1q.
type fakeLinks struct {
	links  map[int]netlink.Link
	next   int
	noVLAN bool     // a kernel without 802.1q
	fail   string   // "rename": LinkSetName fails
	calls  []string // mutations, in order
}

func newFakeLinks() *fakeLinks { return &fakeLinks{links: map[int]netlink.Link{}, next: 1} }

var _ links = (*fakeLinks)(nil)

func cloneLink(l netlink.Link) netlink.Link {
	switch v := l.(type) {
	case *netlink.Vlan:
		c := *v
		return &c
	case *netlink.Device:
		c := *v
		return &c
	}
	panic(fmt.Sprintf("fake: unsupported %T", l))
}

// device adds a plain interface (a NIC, say), up or down.
func (f *fakeLinks) device(name string, up bool) int {
	la := netlink.LinkAttrs{Name: name, NetNsID: -1, HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, byte(f.next)}}
	if up {
		la.Flags = net.FlagUp
	}
	return f.put(&netlink.Device{LinkAttrs: la})
}

// vlan adds a VLAN link as someone else would.
func (f *fakeLinks) vlan(name, base string, vid int, alias string, up bool) int {
	b, err := f.LinkByName(base)
	if err != nil {
		panic(err)
	}
	la := netlink.LinkAttrs{Name: name, NetNsID: -1, ParentIndex: b.Attrs().Index, Alias: alias}
	if up {
		la.Flags = net.FlagUp
	}
	return f.put(&netlink.Vlan{LinkAttrs: la, VlanId: vid})
}

func (f *fakeLinks) put(l netlink.Link) int {
	l.Attrs().Index = f.next
	f.links[f.next] = l
	f.next++
	return l.Attrs().Index
}

func (f *fakeLinks) setUp(name string, up bool) {
	l, err := f.byName(name)
	if err != nil {
		panic(err)
	}
	if up {
		l.Attrs().Flags |= net.FlagUp
	} else {
		l.Attrs().Flags &^= net.FlagUp
	}
}

func (f *fakeLinks) byName(name string) (netlink.Link, error) {
	for _, l := range f.links {
		if l.Attrs().Name == name {
			return l, nil
		}
	}
	return nil, unix.ENODEV
}

func (f *fakeLinks) resolve(l netlink.Link) (netlink.Link, error) {
	if i := l.Attrs().Index; i != 0 {
		if cur, ok := f.links[i]; ok {
			return cur, nil
		}
		return nil, unix.ENODEV
	}
	return f.byName(l.Attrs().Name)
}

func (f *fakeLinks) LinkByName(name string) (netlink.Link, error) {
	l, err := f.byName(name)
	if err != nil {
		return nil, err
	}
	return cloneLink(l), nil
}

func (f *fakeLinks) LinkByIndex(i int) (netlink.Link, error) {
	if l, ok := f.links[i]; ok {
		return cloneLink(l), nil
	}
	return nil, unix.ENODEV
}

func (f *fakeLinks) LinkList() ([]netlink.Link, error) {
	var out []netlink.Link
	for _, l := range f.links {
		out = append(out, cloneLink(l))
	}
	return out, nil
}

func (f *fakeLinks) LinkAdd(l netlink.Link) error {
	v, ok := l.(*netlink.Vlan)
	if !ok {
		return unix.EOPNOTSUPP
	}
	if f.noVLAN {
		return unix.EOPNOTSUPP
	}
	if _, err := f.byName(v.Name); err == nil {
		return unix.EEXIST
	}
	if _, ok := f.links[v.ParentIndex]; !ok {
		return unix.ENODEV
	}
	for _, o := range f.links {
		if ov, ok := o.(*netlink.Vlan); ok && ov.ParentIndex == v.ParentIndex && ov.VlanId == v.VlanId {
			return unix.EEXIST
		}
	}
	c := *v
	c.Flags, c.NetNsID, c.Alias = 0, -1, "" // born down; the kernel ignores an alias here
	f.calls = append(f.calls, "add "+v.Name)
	f.put(&c)
	return nil
}

func (f *fakeLinks) LinkDel(l netlink.Link) error {
	cur, err := f.resolve(l)
	if err != nil {
		return err
	}
	f.calls = append(f.calls, "del "+cur.Attrs().Name)
	delete(f.links, cur.Attrs().Index)
	for i, o := range f.links {
		if _, ok := o.(*netlink.Vlan); ok && o.Attrs().ParentIndex == cur.Attrs().Index {
			delete(f.links, i)
		}
	}
	return nil
}

func (f *fakeLinks) LinkSetAlias(l netlink.Link, alias string) error {
	cur, err := f.resolve(l)
	if err != nil {
		return err
	}
	f.calls = append(f.calls, "alias "+cur.Attrs().Name)
	cur.Attrs().Alias = alias
	return nil
}

func (f *fakeLinks) LinkSetName(l netlink.Link, name string) error {
	cur, err := f.resolve(l)
	if err != nil {
		return err
	}
	if f.fail == "rename" {
		return unix.EEXIST
	}
	if cur.Attrs().Flags&net.FlagUp != 0 {
		return unix.EBUSY
	}
	if _, err := f.byName(name); err == nil {
		return unix.EEXIST
	}
	f.calls = append(f.calls, "rename "+cur.Attrs().Name+" "+name)
	cur.Attrs().Name = name
	return nil
}

func (f *fakeLinks) LinkSetUp(l netlink.Link) error {
	cur, err := f.resolve(l)
	if err != nil {
		return err
	}
	if _, ok := cur.(*netlink.Vlan); ok {
		if base := f.links[cur.Attrs().ParentIndex]; base == nil || base.Attrs().Flags&net.FlagUp == 0 {
			return unix.ENETDOWN
		}
	}
	f.calls = append(f.calls, "up "+cur.Attrs().Name)
	cur.Attrs().Flags |= net.FlagUp
	return nil
}

func fakeParents(f *fakeLinks) parentLinks {
	return parentLinks{h: f, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func vlanNet(id, parent string) datapath.Network {
	p := netip.MustParsePrefix("10.90.1.0/24")
	return datapath.Network{ID: id, Name: id, Driver: datapath.DriverMacvlan, Subnet: p, Gateway: p.Addr().Next(), Parent: parent}
}

func TestVLANParentCreatedMarkedAndRemoved(t *testing.T) {
	f := newFakeLinks()
	eth1 := f.device("eth1", true)
	p := fakeParents(f)
	n := vlanNet("net10abcdef0123", "eth1.10")

	link, created, err := p.ensure(n)
	if err != nil || !created {
		t.Fatalf("ensure: created %v, %v", created, err)
	}
	v, ok := link.(*netlink.Vlan)
	if !ok || v.Name != "eth1.10" || v.VlanId != 10 || v.ParentIndex != eth1 || v.Alias != datapath.OwnerPrefix+"vlan:"+n.ID || !IsUp(v) {
		t.Fatalf("made %T %+v", link, link)
	}
	// Born under the temporary name, marked before it gets the real one.
	want := "add fv-net10abcdef0,alias fv-net10abcdef0,rename fv-net10abcdef0 eth1.10,up eth1.10"
	if got := strings.Join(f.calls, ","); got != want {
		t.Errorf("calls %s\nwant  %s", got, want)
	}

	f.calls = nil
	if _, created, err := p.ensure(n); err != nil || created || len(f.calls) != 0 {
		t.Errorf("second ensure: created %v err %v calls %v", created, err, f.calls)
	}
	// Down (someone did it): fabric's own VLAN is set up again.
	f.setUp("eth1.10", false)
	if _, _, err := p.ensure(n); err != nil || !IsUp(mustFake(t, f, "eth1.10")) {
		t.Errorf("ensure of a down fabric VLAN: %v", err)
	}
	// Base down: reported, not forced.
	f.setUp("eth1", false)
	f.setUp("eth1.10", false) // the kernel takes VLANs down with their base
	for _, err := range []error{third(p.ensure(n)), second(p.lookup(n))} {
		if !errors.Is(err, datapath.ErrParentMissing) || !strings.Contains(err.Error(), "base eth1 of VLAN parent eth1.10 is down") {
			t.Errorf("base down: %v", err)
		}
	}
	f.setUp("eth1", true)
	f.calls = nil
	if err := p.deleteVLAN(n); err != nil {
		t.Fatal(err)
	}
	if _, err := f.byName("eth1.10"); err == nil || strings.Join(f.calls, ",") != "del eth1.10" {
		t.Errorf("deleteVLAN: calls %v", f.calls)
	}
	if err := p.deleteVLAN(n); err != nil {
		t.Errorf("deleting a missing VLAN: %v", err)
	}
}

func TestVLANParentOfTheUserIsNeverTouched(t *testing.T) {
	f := newFakeLinks()
	f.device("eth1", true)
	f.vlan("eth1.30", "eth1", 30, "", false)
	p := fakeParents(f)
	n := vlanNet("net30", "eth1.30")

	if _, _, err := p.ensure(n); !errors.Is(err, datapath.ErrParentMissing) || !strings.Contains(err.Error(), "eth1.30 is down") {
		t.Errorf("user's VLAN down: %v", err)
	}
	f.setUp("eth1.30", true)
	if _, created, err := p.ensure(n); err != nil || created {
		t.Errorf("user's VLAN up: created %v, %v", created, err)
	}
	// Another fabric network's VLAN is used as it is, too.
	f.vlan("eth1.31", "eth1", 31, datapath.OwnerPrefix+"vlan:other", true)
	if _, _, err := p.ensure(vlanNet("net31", "eth1.31")); err != nil {
		t.Error(err)
	}
	if err := p.deleteVLAN(n); err != nil {
		t.Fatal(err)
	}
	if err := p.deleteVLAN(vlanNet("net31", "eth1.31")); err != nil {
		t.Fatal(err)
	}
	if len(f.calls) != 0 {
		t.Errorf("links that are not this network's were changed: %v", f.calls)
	}
}

func TestVLANParentMissingBaseCreatesNothing(t *testing.T) {
	f := newFakeLinks()
	f.device("eth1", false)
	p := fakeParents(f)
	for parent, want := range map[string]string{
		"eth9.10": "base eth9 of VLAN parent eth9.10 does not exist",
		"eth1.10": "base eth1 of VLAN parent eth1.10 is down",
		"eth9":    "parent eth9 does not exist",
	} {
		_, _, err := p.ensure(vlanNet("n", parent))
		if !errors.Is(err, datapath.ErrParentMissing) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want ErrParentMissing with %q", parent, err, want)
		}
		if _, err := p.lookup(vlanNet("n", parent)); !errors.Is(err, datapath.ErrParentMissing) {
			t.Errorf("%s: lookup: %v", parent, err)
		}
	}
	if len(f.calls) != 0 || len(f.links) != 1 {
		t.Errorf("made something: %v", f.calls)
	}
}

// TestVLANHalfMadeIsAdopted: a crash between creation and renaming leaves
// the VLAN under its temporary name, with or without alias; the next
// ensure finishes it instead of failing on the taken VID.
func TestVLANHalfMadeIsAdopted(t *testing.T) {
	for _, alias := range []string{"", datapath.OwnerPrefix + "vlan:net20"} {
		f := newFakeLinks()
		f.device("eth1", true)
		idx := f.vlan("fv-net20", "eth1", 20, alias, false)
		p := fakeParents(f)
		n := vlanNet("net20", "eth1.20")
		link, created, err := p.ensure(n)
		if err != nil || !created || link.Attrs().Index != idx || link.Attrs().Name != "eth1.20" || link.Attrs().Alias != datapath.OwnerPrefix+"vlan:net20" {
			t.Errorf("alias %q: adopt: %v created %v link %+v", alias, err, created, link)
		}
	}
	// One of this network's, but for another VID: replaced.
	f := newFakeLinks()
	f.device("eth1", true)
	old := f.vlan("fv-net20", "eth1", 99, datapath.OwnerPrefix+"vlan:net20", false)
	link, _, err := fakeParents(f).ensure(vlanNet("net20", "eth1.20"))
	if err != nil || link.Attrs().Index == old || link.(*netlink.Vlan).VlanId != 20 {
		t.Errorf("stale half-made VLAN: %v %+v", err, link)
	}
	if _, err := f.LinkByIndex(old); err == nil {
		t.Error("stale half-made VLAN kept")
	}
	// Not fabric's at all: refused, untouched.
	f = newFakeLinks()
	f.device("eth1", true)
	f.device("fv-net20", true)
	if _, _, err := fakeParents(f).ensure(vlanNet("net20", "eth1.20")); !errors.Is(err, datapath.ErrInvalid) || len(f.calls) != 0 {
		t.Errorf("foreign link under the temporary name: %v, calls %v", err, f.calls)
	}
	// deleteVLAN also removes a half-made one.
	f = newFakeLinks()
	f.device("eth1", true)
	f.vlan("fv-net20", "eth1", 20, "", false)
	if err := fakeParents(f).deleteVLAN(vlanNet("net20", "eth1.20")); err != nil || len(f.links) != 1 {
		t.Errorf("deleteVLAN with a half-made VLAN: %v, %d links", err, len(f.links))
	}
}

func TestVLANCreateFailures(t *testing.T) {
	// The VID is taken under another name: say which.
	f := newFakeLinks()
	f.device("eth1", true)
	f.vlan("vlan20", "eth1", 20, "", true)
	_, _, err := fakeParents(f).ensure(vlanNet("n", "eth1.20"))
	if !errors.Is(err, datapath.ErrInvalid) || !strings.Contains(err.Error(), "already exists as vlan20") {
		t.Errorf("VID taken: %v", err)
	}
	// No 802.1q in the kernel.
	f = newFakeLinks()
	f.device("eth1", true)
	f.noVLAN = true
	_, _, err = fakeParents(f).ensure(vlanNet("n", "eth1.20"))
	if !errors.Is(err, datapath.ErrInvalid) || !strings.Contains(err.Error(), "CONFIG_VLAN_8021Q") {
		t.Errorf("no 802.1q: %v", err)
	}
	// A step after creation fails: the new link is rolled back.
	f = newFakeLinks()
	f.device("eth1", true)
	f.fail = "rename"
	if _, _, err = fakeParents(f).ensure(vlanNet("n", "eth1.20")); err == nil {
		t.Fatal("ensure succeeded although renaming failed")
	}
	if len(f.links) != 1 {
		t.Errorf("half-made VLAN left after a failure: %v", f.calls)
	}
}

func mustFake(t *testing.T, f *fakeLinks, name string) netlink.Link {
	t.Helper()
	l, err := f.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func second[A, B any](_ A, b B) B { return b }

func third[A, B, C any](_ A, _ B, c C) C { return c }
