package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/store"
	"github.com/fabricnet/fabric/datapath"
)

// fakeDatapath records what the agent asks for and fails on demand.
type fakeDatapath struct {
	mu           sync.Mutex
	networks     map[string]datapath.Network
	endpoints    map[string]datapath.Endpoint
	failNetwork  error
	failEndpoint error
	syncs        []datapath.State
	remotes      map[string][]datapath.Remote // by network ID
	gate         *gatedRemotes                // if set, SetRemotes waits for it
	deletes      []datapath.Endpoint          // every DeleteEndpoint, in order
}

func newFake() *fakeDatapath {
	return &fakeDatapath{networks: map[string]datapath.Network{}, endpoints: map[string]datapath.Endpoint{}}
}

func (f *fakeDatapath) EnsureNetwork(_ context.Context, n datapath.Network) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failNetwork != nil {
		return f.failNetwork
	}
	f.networks[n.ID] = n
	return nil
}

func (f *fakeDatapath) DeleteNetwork(_ context.Context, n datapath.Network) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.networks, n.ID)
	return nil
}

func (f *fakeDatapath) EnsureEndpoint(_ context.Context, _ datapath.Network, ep datapath.Endpoint) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failEndpoint != nil {
		return f.failEndpoint
	}
	f.endpoints[ep.ID] = ep
	return nil
}

func (f *fakeDatapath) DeleteEndpoint(_ context.Context, _ datapath.Network, ep datapath.Endpoint) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.endpoints, ep.ID)
	f.deletes = append(f.deletes, ep)
	return nil
}

func (f *fakeDatapath) SetRemotes(_ context.Context, n datapath.Network, r []datapath.Remote) error {
	f.mu.Lock()
	g := f.gate
	f.mu.Unlock()
	if g != nil {
		g.wait()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.remotes == nil {
		f.remotes = map[string][]datapath.Remote{}
	}
	f.remotes[n.ID] = append([]datapath.Remote(nil), r...)
	return nil
}

func (f *fakeDatapath) Sync(_ context.Context, s datapath.State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.syncs = append(f.syncs, s)
	f.networks, f.endpoints = map[string]datapath.Network{}, map[string]datapath.Endpoint{}
	for _, n := range s.Networks {
		f.networks[n.ID] = n
	}
	for _, ep := range s.Endpoints {
		f.endpoints[ep.ID] = ep
	}
	return nil
}

func (f *fakeDatapath) Status(context.Context) datapath.Status { return datapath.Status{Name: "fake"} }
func (f *fakeDatapath) Close() error                           { return nil }

// newTestAgent starts an agent on dir with a fake host (no root needed).
func newTestAgent(t *testing.T, dir string, dp datapath.Datapath) *Agent {
	t.Helper()
	return newTestAgentOn(t, dir, dp, newFakeHost())
}

// newKernelTestAgent starts an agent on dir that makes real namespaces,
// for tests of commands and namespaces (they need root).
func newKernelTestAgent(t *testing.T, dir string, dp datapath.Datapath) *Agent {
	t.Helper()
	return newTestAgentOn(t, dir, dp, nil)
}

func newTestAgentOn(t *testing.T, dir string, dp datapath.Datapath, host Host) *Agent {
	t.Helper()
	a, err := New(Options{
		StateDir: dir, Socket: filepath.Join(dir, "sock"), NodeName: "test", Host: host,
		DefaultSubnet: netip.MustParsePrefix("10.200.0.0/16"), Datapath: dp,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(context.Background()); err != nil {
		a.Close()
		t.Fatal(err)
	}
	return a
}

func TestNetworkCreateRollsBackWhenTheDatapathFails(t *testing.T) {
	dir, dp := t.TempDir(), newFake()
	a := newTestAgent(t, dir, dp)
	dp.failNetwork = errors.New("netlink says no")
	_, err := a.CreateNetwork(context.Background(), api.NetworkCreate{Name: "n1", Subnet: "10.201.0.0/24"})
	if err == nil || !errors.Is(err, dp.failNetwork) {
		t.Fatalf("create with failing datapath: %v", err)
	}
	if len(a.Networks()) != 1 {
		t.Fatalf("networks after failed create: %+v", a.Networks())
	}
	a.Close()
	// Nothing was persisted either.
	dp.failNetwork = nil
	a = newTestAgent(t, dir, dp)
	defer a.Close()
	if got := a.Networks(); len(got) != 1 || got[0].Name != DefaultNetworkName {
		t.Fatalf("after restart: %+v", got)
	}
	// The same request now succeeds: the name and subnet were not leaked.
	if _, err := a.CreateNetwork(context.Background(), api.NetworkCreate{Name: "n1", Subnet: "10.201.0.0/24"}); err != nil {
		t.Fatal(err)
	}
}

func TestRejectedNetworkRequestsChangeNothing(t *testing.T) {
	dir, dp := t.TempDir(), newFake()
	a := newTestAgent(t, dir, dp)
	defer a.Close()
	ctx := context.Background()
	if _, err := a.CreateNetwork(ctx, api.NetworkCreate{Name: "ok", Subnet: "10.202.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	before := a.Networks()
	for _, tc := range []struct {
		req  api.NetworkCreate
		kind error
	}{
		{api.NetworkCreate{Name: "ok", Subnet: "10.203.0.0/24"}, ErrConflict},
		{api.NetworkCreate{Name: "x", Subnet: "10.202.0.128/25"}, ErrConflict},
		{api.NetworkCreate{Name: "x", Subnet: "10.203.0.1/24"}, ErrInvalid},
		{api.NetworkCreate{Name: "x", Subnet: "10.203.0.0/24", Gateway: "10.204.0.1"}, ErrInvalid},
		{api.NetworkCreate{Name: "x", Driver: "overlay"}, ErrInvalid},
		{api.NetworkCreate{Name: "x", Options: map[string]string{"mtu": "9"}}, ErrInvalid},
		{api.NetworkCreate{Name: "none"}, ErrInvalid},
		{api.NetworkCreate{Name: ""}, ErrInvalid},
	} {
		_, err := a.CreateNetwork(ctx, tc.req)
		if !errors.Is(err, tc.kind) {
			t.Errorf("%+v: err %v, want %v", tc.req, err, tc.kind)
		}
	}
	if err := a.RemoveNetwork(ctx, DefaultNetworkName); !errors.Is(err, ErrInvalid) {
		t.Errorf("removing the default network: %v", err)
	}
	after := a.Networks()
	if len(after) != len(before) {
		t.Fatalf("rejected requests changed the networks: %+v", after)
	}
	if len(dp.networks) != 2 {
		t.Fatalf("datapath has %d networks, want 2", len(dp.networks))
	}
}

func TestStartRollsBackUnfinishedCreatesAndFinishesRemovals(t *testing.T) {
	dir, dp := t.TempDir(), newFake()
	a := newTestAgent(t, dir, dp)
	ctx := context.Background()
	keep, err := a.CreateNetwork(ctx, api.NetworkCreate{Name: "keep", Subnet: "10.205.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	// Simulate an agent killed half-way through a create and a removal.
	st, err := store.Open(filepath.Join(dir, "state.db"), nil, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	err = st.Update(func(tx *store.Tx) error {
		half := networkRec{ID: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", Name: "half", Driver: "bridge",
			Subnet: netip.MustParsePrefix("10.206.0.0/24"), Gateway: netip.MustParseAddr("10.206.0.1"),
			Bridge: "fb-half", MTU: 1500, Phase: phaseCreating}
		if err := tx.Put(bucketNetworks, half.ID, half); err != nil {
			return err
		}
		var k networkRec
		if _, err := tx.Get(bucketNetworks, keep.ID, &k); err != nil {
			return err
		}
		k.Phase = phaseRemoving
		return tx.Put(bucketNetworks, k.ID, k)
	})
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	a = newTestAgent(t, dir, dp)
	defer a.Close()
	for _, n := range a.Networks() {
		if n.Name == "half" || n.Name == "keep" {
			t.Errorf("network %s survived the restart (phase creating/removing)", n.Name)
		}
	}
	last := dp.syncs[len(dp.syncs)-1]
	if len(last.Networks) != 1 || last.Networks[0].Name != DefaultNetworkName {
		t.Fatalf("datapath synced to %+v, want only the default network", last.Networks)
	}
}

func TestSandboxRollbackReleasesItsAddress(t *testing.T) {
	dir, dp, host := t.TempDir(), newFake(), newFakeHost()
	a := newTestAgentOn(t, dir, dp, host)
	defer a.Close()
	ctx := context.Background()
	name := sandboxName(t, "ag")
	dp.failEndpoint = errors.New("veth refused")
	_, err := a.CreateSandbox(ctx, api.SandboxCreate{Name: name, IP: "10.200.0.7"})
	if !errors.Is(err, dp.failEndpoint) {
		t.Fatalf("create with failing endpoint: %v", err)
	}
	if host.NamespaceExists(name) {
		t.Fatal("namespace of the rolled-back sandbox is left")
	}
	if len(a.Sandboxes()) != 0 || len(a.Endpoints()) != 0 {
		t.Fatalf("records left: %+v %+v", a.Sandboxes(), a.Endpoints())
	}
	dp.failEndpoint = nil
	sb, err := a.CreateSandbox(ctx, api.SandboxCreate{Name: name, IP: "10.200.0.7"})
	if err != nil {
		t.Fatalf("same address after rollback: %v", err)
	}
	if len(sb.Endpoints) != 1 || sb.Endpoints[0].IP != "10.200.0.7/16" || !host.NamespaceExists(name) {
		t.Fatalf("sandbox %+v (namespace made: %v)", sb, host.NamespaceExists(name))
	}
	if err := a.RemoveSandbox(ctx, name); err != nil {
		t.Fatal(err)
	}
	if host.NamespaceExists(name) {
		t.Fatal("namespace still there after RemoveSandbox")
	}
}

// TestOnlyASandboxRemovalLeavesPairsToItsNamespace: the endpoints of a
// sandbox being removed are deleted with NamespaceGoes (the namespace goes
// next, and their pairs with it); a disconnected one without (its
// sandbox stays, so its pair must go now), and so are those of a create
// rolled back (a rejected request leaves nothing behind once answered).
func TestOnlyASandboxRemovalLeavesPairsToItsNamespace(t *testing.T) {
	dir, dp, host := t.TempDir(), newFake(), newFakeHost()
	a := newTestAgentOn(t, dir, dp, host)
	defer a.Close()
	ctx := context.Background()
	if _, err := a.CreateSandbox(ctx, api.SandboxCreate{Name: sandboxName(t, "ag"), Command: []string{"/nonexistent/command"}}); err == nil {
		t.Fatal("a sandbox with a command that does not exist was created")
	}
	if len(dp.deletes) != 1 || dp.deletes[0].NamespaceGoes {
		t.Fatalf("the rollback deleted %+v, want one endpoint without NamespaceGoes", dp.deletes)
	}
	dp.deletes = nil
	name := sandboxName(t, "ag")
	if _, err := a.CreateSandbox(ctx, api.SandboxCreate{Name: name}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"aside", "other"} {
		if _, err := a.CreateNetwork(ctx, api.NetworkCreate{Name: n}); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Connect(ctx, n, api.Connect{Sandbox: name}); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Disconnect(ctx, "aside", api.Disconnect{Sandbox: name}); err != nil {
		t.Fatal(err)
	}
	if len(dp.deletes) != 1 || dp.deletes[0].NamespaceGoes {
		t.Fatalf("disconnect deleted %+v, want one endpoint without NamespaceGoes", dp.deletes)
	}
	if err := a.RemoveSandbox(ctx, name); err != nil {
		t.Fatal(err)
	}
	if len(dp.deletes) != 3 {
		t.Fatalf("sandbox removal deleted %d endpoints, want 2", len(dp.deletes)-1)
	}
	for _, ep := range dp.deletes[1:] {
		if !ep.NamespaceGoes {
			t.Errorf("sandbox removal deleted endpoint %s without NamespaceGoes", ep.HostIfName)
		}
	}
	if host.NamespaceExists(name) {
		t.Fatal("namespace still there after RemoveSandbox")
	}
}

// TestPublishedPortsClashAcrossRollbackRemoveAndRestart: the index of
// published host ports (putSandbox/dropSandbox) refuses a port in use,
// frees it when its sandbox goes or its create is rolled back, and is
// rebuilt from the store after a restart.
func TestPublishedPortsClashAcrossRollbackRemoveAndRestart(t *testing.T) {
	dir, dp := t.TempDir(), newFake()
	a := newTestAgent(t, dir, dp)
	ctx := context.Background()
	web, other, third := sandboxName(t, "agp"), sandboxName(t, "agp"), sandboxName(t, "agp")
	create := func(a *Agent, name string, ports ...string) error {
		_, err := a.CreateSandbox(ctx, api.SandboxCreate{Name: name, Ports: ports})
		return err
	}
	clash := func(a *Agent, name, port string) {
		t.Helper()
		if err := create(a, name, port); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "already published") {
			t.Fatalf("-p %s while %s publishes it: %v, want a conflict", port, web, err)
		}
	}
	if err := create(a, web, "8080:80", "127.0.0.1:9090:90"); err != nil {
		t.Fatal(err)
	}
	clash(a, other, "8080:80")
	clash(a, other, "127.0.0.1:9090:91")
	clash(a, other, "9090:91") // all addresses include 127.0.0.1
	if err := create(a, other, "8080:80/udp", "10.0.0.1:9090:90"); err != nil {
		t.Fatalf("other protocol, other address: %v", err)
	}
	// A rolled-back create leaves its ports free.
	dp.failEndpoint = errors.New("veth refused")
	if err := create(a, third, "7070:70"); !errors.Is(err, dp.failEndpoint) {
		t.Fatalf("create with failing endpoint: %v", err)
	}
	dp.failEndpoint = nil
	if err := create(a, third, "7070:70"); err != nil {
		t.Fatalf("port of a rolled-back create: %v", err)
	}
	// After a restart the ports in use are still refused.
	a.Close()
	a = newTestAgent(t, dir, dp)
	defer a.Close()
	clash(a, sandboxName(t, "agp"), "8080:80")
	clash(a, sandboxName(t, "agp"), "7070:70")
	// Removing a sandbox frees its ports, and only its ports.
	if err := a.RemoveSandbox(ctx, web); err != nil {
		t.Fatal(err)
	}
	again := sandboxName(t, "agp")
	if err := create(a, again, "8080:80", "127.0.0.1:9090:90"); err != nil {
		t.Fatalf("ports of a removed sandbox: %v", err)
	}
	clash(a, sandboxName(t, "agp"), "8080:80/udp")
}

// The API names request fields by their JSON names, never by fabricctl's
// flags, and lists the ones a message names so clients can map them.
func TestRejectionsNameAPIFields(t *testing.T) {
	dir, dp := t.TempDir(), newFake()
	a := newTestAgent(t, dir, dp)
	defer a.Close()
	ctx := context.Background()
	for _, tc := range []struct {
		create func() error
		fields []string
		want   string
	}{
		{func() error {
			_, err := a.CreateSandbox(ctx, api.SandboxCreate{Name: "s", Network: "none", IP: "10.200.0.9"})
			return err
		}, []string{"ip", "network"}, "ip cannot be given with network none: it assigns no addresses"},
		{func() error {
			_, err := a.CreateSandbox(ctx, api.SandboxCreate{Name: "s", Network: "none", Ports: []string{"8080:80"}})
			return err
		}, []string{"ports", "network"}, "ports needs a sandbox address"},
		{func() error {
			_, err := a.CreateNetwork(ctx, api.NetworkCreate{Name: "x", Gateway: "10.9.0.1"})
			return err
		}, []string{"gateway", "ip_range", "subnet"}, "gateway and ip_range need subnet"},
		{func() error {
			_, err := a.CreateNetwork(ctx, api.NetworkCreate{Name: "x", Subnet: "banana"})
			return err
		}, []string{"subnet"}, `subnet "banana" is not a CIDR`},
	} {
		err := tc.create()
		e := apiError(err)
		if e.Code != api.CodeInvalid || !strings.Contains(e.Message, tc.want) || !slices.Equal(e.Fields, tc.fields) {
			t.Errorf("rejection %+v, want code invalid, a message with %q and fields %v", e, tc.want, tc.fields)
		}
		if strings.Contains(e.Message, "--") || strings.Contains(e.Message, "-p ") {
			t.Errorf("rejection %q names a command-line flag", e.Message)
		}
	}
}
