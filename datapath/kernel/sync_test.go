package kernel

import (
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/datapath"
)

func TestSyncPrunesOnlyFabricLinks(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	a := l.bridgeNetwork("neta", "br-a", "10.89.1.0/24", false)
	b := l.bridgeNetwork("netb", "br-b", "10.89.2.0/24", false)
	j1 := l.join(a, "ep1", "vh1", 2, datapath.PortMapping{Proto: "tcp", HostPort: 8080, Port: 80})
	s1, e1 := j1.name, j1.ep
	l.join(b, "ep2", "vh2", 2, datapath.PortMapping{Proto: "tcp", HostPort: 8081, Port: 80})
	for name, alias := range map[string]string{"ghost0": datapath.OwnerPrefix + "ghost", "other0": "not-fabric", "plain0": ""} {
		la := netlink.NewLinkAttrs()
		la.Name = name
		if err := l.hostNL.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			t.Fatalf("add %s: %v", name, err)
		}
		if alias != "" {
			if err := l.hostNL.LinkSetAlias(l.link(name), alias); err != nil {
				t.Fatal(err)
			}
		}
	}
	vh1 := l.link("vh1").Attrs().Index

	if err := l.dp.Sync(ctx, datapath.State{Networks: []datapath.Network{a}, Endpoints: []datapath.Endpoint{e1}}); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	for _, gone := range []string{"ghost0", "br-b", "vh2"} {
		if !l.linkGone(gone) {
			t.Errorf("%s survived Sync", gone)
		}
	}
	for _, kept := range []string{"other0", "plain0", "br-a"} {
		l.link(kept)
	}
	if l.link("vh1").Attrs().Index != vh1 {
		t.Error("Sync recreated an endpoint that was fine")
	}
	if n := l.portElemCount(); n != 1 {
		t.Errorf("published-port elements after Sync: %d, want 1 (only ep1's port)", n)
	}
	mustPing(t, s1, "10.89.1.1")

	st := l.dp.Status(ctx)
	if st.Name != "kernel" || !strings.Contains(strings.Join(st.Details, ";"), "1 bridges, 1 port rules") {
		t.Errorf("Status = %+v", st)
	}
}

func TestSyncRecreatesDeletedVeth(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	a := network("neta", "br-a", "10.89.1.0/24", false)
	s1, p1 := l.sandbox()
	e1 := endpoint("ep1", a, p1, "eth0", "vh1", 2, true)
	state := datapath.State{Networks: []datapath.Network{a}, Endpoints: []datapath.Endpoint{e1}}
	if err := l.dp.Sync(ctx, state); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	mustPing(t, s1, "10.89.1.1")
	if err := l.hostNL.LinkDel(l.link("vh1")); err != nil {
		t.Fatal(err)
	}
	if err := l.dp.Sync(ctx, state); err != nil {
		t.Fatalf("second Sync: %v", err)
	}
	l.link("vh1")
	mustPing(t, s1, "10.89.1.1")
}
