package kernel

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/fabricnet/fabric/datapath"
)

// TestPublishedPortClashFollowsChanges: a host port is refused while
// another endpoint publishes it and free again once that endpoint moved
// to another port or went, through Ensure, Delete and Sync (the index of
// published ports follows each).
func TestPublishedPortClashFollowsChanges(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	n := l.bridgeNetwork("netc", "br-c", "10.89.42.0/24", false)
	tcp := func(port uint16) datapath.PortMapping {
		return datapath.PortMapping{Proto: "tcp", HostPort: port, Port: 80}
	}
	ensure := func(ep datapath.Endpoint) error { return l.dp.EnsureEndpoint(context.Background(), n, ep) }
	clash := func(err error) bool {
		return err != nil && strings.Contains(err.Error(), "is already published by endpoint epc1")
	}
	j1 := l.join(n, "epc1", "vhc1", 2, tcp(8080))
	_, p2 := l.sandbox()
	ep2 := endpoint("epc2", n, p2, "eth0", "vhc2", 3, true, tcp(8080))
	if err := ensure(ep2); !clash(err) {
		t.Fatalf("second endpoint publishing 8080/tcp: %v, want a clash", err)
	}
	udp := ep2
	udp.Ports = []datapath.PortMapping{{Proto: "udp", HostPort: 8080, Port: 80}}
	if err := ensure(udp); err != nil {
		t.Fatalf("8080/udp: %v", err)
	}
	// ep1 moves to 8081: 8080/tcp is free, 8081/tcp is not.
	moved := j1.ep
	moved.Ports = []datapath.PortMapping{tcp(8081)}
	l.ensureEndpoint(n, moved)
	if err := ensure(ep2); err != nil {
		t.Fatalf("8080/tcp after ep1 moved to 8081: %v", err)
	}
	_, p3 := l.sandbox()
	ep3 := endpoint("epc3", n, p3, "eth0", "vhc3", 4, true, tcp(8081))
	if err := ensure(ep3); !clash(err) {
		t.Fatalf("8081/tcp while ep1 publishes it: %v, want a clash", err)
	}
	// After a Sync (the state replaced wholesale) the same holds.
	state := datapath.State{Networks: []datapath.Network{n}, Endpoints: []datapath.Endpoint{moved, ep2}}
	if err := l.dp.Sync(context.Background(), state); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if err := ensure(ep3); !clash(err) {
		t.Fatalf("8081/tcp after Sync while ep1 publishes it: %v, want a clash", err)
	}
	// A state naming both for 8081/tcp: the Sync reports the clash.
	if err := l.dp.Sync(context.Background(), datapath.State{Networks: state.Networks, Endpoints: []datapath.Endpoint{moved, ep2, ep3}}); !strings.Contains(fmt.Sprint(err), "8081/tcp is already published by endpoint epc1") {
		t.Fatalf("Sync with two endpoints on 8081/tcp: %v, want the clash", err)
	}
	if err := l.dp.Sync(context.Background(), state); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	// ep1 deleted: 8081/tcp is free.
	if err := l.dp.DeleteEndpoint(context.Background(), n, moved); err != nil {
		t.Fatal(err)
	}
	if err := ensure(ep3); err != nil {
		t.Fatalf("8081/tcp after ep1 was deleted: %v", err)
	}
}
