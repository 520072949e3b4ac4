package agent

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// What Docker's plugin asks of the agent: subnets and addresses checked
// without reserving, ports checked, a sandbox marked as Docker's with its
// ports and names, and all of it kept across a restart.
func TestOwnedSandboxHelpers(t *testing.T) {
	dir, dp := t.TempDir(), newFake()
	a := newTestAgent(t, dir, dp)
	ctx := context.Background()
	if _, err := a.CreateNetwork(ctx, api.NetworkCreate{Name: "dn", Subnet: "10.210.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	if err := a.CheckSubnet(netip.MustParsePrefix("10.210.0.0/24")); err != nil {
		t.Fatalf("the exact subnet of a network: %v", err)
	}
	if err := a.CheckSubnet(netip.MustParsePrefix("10.210.0.128/25")); !errors.Is(err, ErrConflict) {
		t.Fatalf("an overlapping subnet: %v", err)
	}
	ip2, ip3 := netip.MustParseAddr("10.210.0.2"), netip.MustParseAddr("10.210.0.3")
	if got, err := a.FreeAddress("dn", map[netip.Addr]bool{ip2: true}); err != nil || got != ip3 {
		t.Fatalf("FreeAddress avoiding .2 = %v, %v", got, err)
	}
	for _, ip := range []netip.Addr{ip2, ip3} {
		if err := a.CheckAddress("dn", ip); err != nil {
			t.Fatalf("FreeAddress reserved %s: %v", ip, err)
		}
	}
	s1, s2 := sandboxName(t, "ow"), sandboxName(t, "ow")
	t.Cleanup(func() { netnstest.Remove(s1); netnstest.Remove(s2) })
	for _, s := range []struct{ name, ip string }{{s1, "10.210.0.2"}, {s2, "10.210.0.3"}} {
		if _, err := a.CreateSandbox(ctx, api.SandboxCreate{Name: s.name, Network: "dn", IP: s.ip}); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.CheckAddress("dn", ip2); !errors.Is(err, ErrConflict) {
		t.Fatalf("CheckAddress of a used address: %v", err)
	}
	if err := a.OwnSandbox(ctx, s1, "docker", "cid1", []string{"8080:80"}); err != nil {
		t.Fatal(err)
	}
	if err := a.CheckPorts([]string{"8080:81"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("CheckPorts of a published port: %v", err)
	}
	if err := a.OwnSandbox(ctx, s2, "docker", "cid2", []string{"8080:80"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("OwnSandbox with a published port: %v", err)
	}
	if sb, _ := a.Sandbox(s2); sb.Owner != "" || len(sb.Ports) != 0 {
		t.Fatalf("a refused OwnSandbox changed the sandbox: %+v", sb)
	}
	if err := a.SetAliases(s1, "dn", []string{"web", "not.a.label", "web", "c-1"}); err != nil {
		t.Fatal(err)
	}
	if name, ok := a.sandboxOfAddr(ip2); !ok || name != s1 {
		t.Fatalf("sandboxOfAddr(%s) = %q, %v", ip2, name, ok)
	}
	if _, ok := a.sandboxOfAddr(netip.MustParseAddr("10.210.0.9")); ok {
		t.Fatal("an address nobody has names a sandbox")
	}

	a.Close()
	a = newTestAgent(t, dir, dp)
	defer a.Close()
	sb, err := a.Sandbox(s1)
	if err != nil {
		t.Fatal(err)
	}
	if sb.Owner != "docker" || sb.ContainerID != "cid1" || len(sb.Ports) != 1 || sb.Ports[0].HostPort != 8080 {
		t.Fatalf("after a restart: %+v", sb)
	}
	if al := sb.Endpoints[0].Aliases; !slices.Equal(al, []string{"web", "c-1"}) {
		t.Fatalf("aliases after a restart: %v, want [web c-1]", al)
	}
	if err := a.CheckPorts([]string{"8080:80"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("the port published through OwnSandbox is free after a restart: %v", err)
	}
}
