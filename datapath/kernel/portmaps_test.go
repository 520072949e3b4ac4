package kernel

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// TestPortChangeIsElementUpdate: with many published ports, adding,
// changing and removing one endpoint's ports is one nftables transaction
// that leaves the table in place (same handle: no rewrite of every other
// port), the ports work, and an element removed by hand is put back by
// Sync.
func TestPortChangeIsElementUpdate(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	_, outside := l.addOutside()
	a := l.bridgeNetwork("neta", "br-a", "10.89.0.0/16", false)
	const others = 30
	var eps []datapath.Endpoint
	for i := range others {
		eps = append(eps, l.join(a, fmt.Sprintf("ep%d", i), fmt.Sprintf("vo%d", i), byte(10+i),
			datapath.PortMapping{Proto: "tcp", HostPort: uint16(9000 + i), Port: 80}).ep)
	}
	if n := l.portElemCount(); n != others {
		t.Fatalf("%d port elements, want %d", n, others)
	}
	handle := l.tableHandle()
	step := func(what string, wantElems int, fn func() error) {
		t.Helper()
		before := l.batches()
		if err := fn(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got := l.batches() - before; got != 1 {
			t.Errorf("%s: %d nftables transactions, want 1", what, got)
		}
		if h := l.tableHandle(); h != handle {
			t.Errorf("%s replaced the table (handle %s -> %s)", what, handle, h)
		}
		if n := l.portElemCount(); n != wantElems {
			t.Errorf("%s: %d port elements, want %d", what, n, wantElems)
		}
	}
	ctx := context.Background()
	_, p := l.sandbox()
	ep := endpoint("new", a, p, "eth0", "vnew", 200, true,
		datapath.PortMapping{Proto: "tcp", HostPort: 8080, Port: 80},
		datapath.PortMapping{Proto: "udp", HostIP: netip.MustParseAddr(uplinkHost), HostPort: 5353, Port: 53})
	step("add", others+2, func() error { return l.dp.EnsureEndpoint(ctx, a, ep) })
	serveTCP(t, p, ":80")
	mustDial(t, outside, "tcp4", uplinkHost+":8080")

	ep.Ports = []datapath.PortMapping{{Proto: "tcp", HostPort: 8081, Port: 80}}
	step("change", others+1, func() error { return l.dp.EnsureEndpoint(ctx, a, ep) })
	mustDial(t, outside, "tcp4", uplinkHost+":8081")
	if got, err := dial(outside, "tcp4", uplinkHost+":8080"); err == nil {
		t.Errorf("port 8080 still published after the change (server saw %s)", got)
	}

	step("delete", others, func() error { return l.dp.DeleteEndpoint(ctx, a, ep) })

	// Drift of one element is found and repaired by the repair pass.
	s := datapath.State{Networks: []datapath.Network{a}, Endpoints: eps}
	if err := l.dp.Sync(ctx, s); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	netnstest.Run(t, l.hostName, "nft", "delete", "element", "ip", tableName, portsMap, "{ tcp . 9003 }")
	if n := l.portElemCount(); n != others-1 {
		t.Fatalf("after deleting one element by hand: %d elements, want %d", n, others-1)
	}
	if err := l.dp.Sync(ctx, s); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if n := l.portElemCount(); n != others {
		t.Errorf("after Sync: %d port elements, want %d", n, others)
	}
	if m, _ := l.dp.Metrics(); m.Repairs[datapath.RepairNFTables] == 0 {
		t.Errorf("the removed element was not counted as a repair: %v", m.Repairs)
	}
}

func (l *lab) batches() int {
	l.dp.mu.Lock()
	defer l.dp.mu.Unlock()
	return l.dp.nftBatches
}

// portElemCount is the number of elements of both port maps.
func (l *lab) portElemCount() int {
	l.t.Helper()
	c, done := nftIn(l.t, l.hostPath)
	defer done()
	n := 0
	for _, addr := range []bool{false, true} {
		elems, err := c.GetSetElements(portsMapSpec(addr))
		if err != nil {
			l.t.Fatalf("elements of %s: %v", portsMapSpec(addr).Name, err)
		}
		n += len(uniqueElements(elems)) // a dump may repeat a key (elements.go)
	}
	return n
}
