package dockerplugin

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// connectBackend is fakeBackend whose Connect succeeds and reports each
// call.
type connectBackend struct {
	*fakeBackend
	connects chan api.Connect
}

func (b *connectBackend) Connect(_ context.Context, _ string, req api.Connect) (api.Endpoint, error) {
	b.connects <- req
	return api.Endpoint{Sandbox: "docker-" + filepath.Base(req.Sandbox)}, nil
}

// inOwnNetNS re-runs the calling test in a child process in a network
// namespace of its own (unshare -n) and reports its outcome; it returns
// true in that child, where the test's body is to run. The plugin works
// in its process's namespace (every goroutine of it, the attach jobs
// too), and the test's pairs are to stay out of the host's.
func inOwnNetNS(t *testing.T) bool {
	t.Helper()
	const env = "FABRIC_PLUGIN_TEST_NETNS"
	if os.Getenv(env) == t.Name() {
		return true
	}
	netnstest.RequireRoot(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare (util-linux)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--net", os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), env+"="+t.Name())
	out, err := cmd.CombinedOutput()
	t.Logf("in its own network namespace:\n%s", out)
	if err != nil {
		t.Fatalf("the test in its own network namespace: %v", err)
	}
	return false
}

// TestAttachSurvivesKillBetweenJoinAndAdoption: the plugin dies after Join
// handed Docker the pair and before the agent adopted it (the attach job
// waiting for Docker is gone with it). Join saved the endpoint's sandbox
// key and link before answering, so the next run resumes the job: it
// waits for Docker's move, whether Docker made it while the plugin was
// down or makes it after, and connects the namespace with that link and
// the address Docker was given, once.
func TestAttachSurvivesKillBetweenJoinAndAdoption(t *testing.T) {
	if !inOwnNetNS(t) {
		return
	}
	for _, moveWhileDown := range []bool{true, false} {
		name := map[bool]string{true: "docker moves the link while the plugin is down", false: "docker moves the link after the restart"}[moveWhileDown]
		t.Run(name, func(t *testing.T) { testResumeAttach(t, moveWhileDown) })
	}
}

func testResumeAttach(t *testing.T, moveWhileDown bool) {
	state := filepath.Join(t.TempDir(), "docker-plugin.json")
	subnet := netip.MustParsePrefix("10.66.0.0/24")
	newBackend := func() *connectBackend {
		return &connectBackend{fakeBackend: &fakeBackend{subnets: map[string]netip.Prefix{"web": subnet}}, connects: make(chan api.Connect, 4)}
	}
	eid := "eeeeeeeeeeee5555"
	if !moveWhileDown {
		eid = "ffffffffffff6666"
	}
	host, peer := linkNames(eid)
	sbName := netnstest.UniqueName("fdr")
	key := netns.Path(sbName) // Docker's sandbox key: no namespace there yet
	t.Cleanup(func() { netnstest.Remove(sbName) })

	// First life: Join, then killed while its attach job waits.
	b1 := newBackend()
	p1 := newTestPlugin(t, b1, state)
	p1.st.Networks["nid-web"] = &netRec{ID: "nid-web", Name: "web", Subnet: subnet.String()}
	ctx1, kill := context.WithCancel(context.Background())
	p1.ctx = ctx1
	if _, err := p1.createEndpoint(createEndpointRequest{NetworkID: "nid-web", EndpointID: eid,
		Interface: &endpointInterface{Address: "10.66.0.5/24"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := p1.join(joinRequest{NetworkID: "nid-web", EndpointID: eid, SandboxKey: key}); err != nil {
		t.Fatal(err)
	}
	p1.mu.Lock()
	waiting := p1.attaching[eid] != nil
	p1.mu.Unlock()
	if !waiting {
		t.Fatal("no attach job waits for Docker after Join")
	}
	kill()
	p1.wg.Wait()
	if len(b1.connects) != 0 {
		t.Fatalf("the first life connected before Docker moved the link: %+v", <-b1.connects)
	}

	dockerMoves := func() {
		t.Helper()
		path, err := netns.CreateNamed(sbName)
		if err != nil {
			t.Fatal(err)
		}
		var checks atomic.Int32
		checks.Store(1)
		hostH, sbH := netnstest.Handle(t, "/proc/self/ns/net"), netnstest.Handle(t, path)
		if err := moveAndAddress(hostH, sbH, path, peer, netip.MustParseAddr("10.66.0.5"), &checks); err != nil {
			t.Fatalf("Docker's move: %v", err)
		}
	}
	if moveWhileDown {
		dockerMoves()
	}

	// Second life, from the state file.
	b2 := newBackend()
	p2 := newTestPlugin(t, b2, state)
	ctx2, stop := context.WithCancel(context.Background())
	defer func() { stop(); p2.wg.Wait() }()
	p2.ctx = ctx2
	p2.resume()
	if !moveWhileDown {
		dockerMoves()
	}
	select {
	case got := <-b2.connects:
		if got.Sandbox != key || got.IP != "10.66.0.5" || got.Link != host {
			t.Errorf("resumed connect: %+v, want sandbox %s, IP 10.66.0.5, link %s", got, key, host)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the restarted plugin never connected the joined endpoint")
	}
	if !netnstest.Poll(10*time.Second, func() bool {
		p2.mu.Lock()
		defer p2.mu.Unlock()
		ep := p2.st.Endpoints[eid]
		return ep != nil && ep.Sandbox != "" && !p2.pending[netip.MustParseAddr("10.66.0.5")]
	}) {
		t.Error("the endpoint's record was not marked connected (or its address is still held as pending)")
	}
	if _, err := netlink.LinkByName(host); err != nil {
		t.Errorf("the host side %s of the pair is gone: %v", host, err)
	}
	select {
	case got := <-b2.connects:
		t.Errorf("connected twice: %+v", got)
	default:
	}
}

// A plugin killed in Join after it made the pair and before it saved the
// endpoint leaves a pair its record does not name, which Docker never got
// (Join did not answer). The next run removes it before it serves, and
// nothing else: not a saved Join's pair, not an adopted link (owner
// alias), not the pair of an endpoint it has no record of (another
// plugin's Join under way in this namespace).
func TestRestartRemovesThePairOfAKilledJoin(t *testing.T) {
	if !inOwnNetNS(t) {
		return
	}
	state := filepath.Join(t.TempDir(), "docker-plugin.json")
	subnet := netip.MustParsePrefix("10.67.0.0/24")
	backend := &fakeBackend{subnets: map[string]netip.Prefix{"web": subnet}}
	p1 := newTestPlugin(t, backend, state)
	p1.st.Networks["nid-web"] = &netRec{ID: "nid-web", Name: "web", Subnet: subnet.String()}
	ctx1, kill := context.WithCancel(context.Background())
	p1.ctx = ctx1
	const savedID, killedID, adoptedID, otherID = "aaaaaaaaaaaa7777", "bbbbbbbbbbbb8888", "cccccccccccc9999", "dddddddddddd0000"
	for i, eid := range []string{savedID, killedID, adoptedID} {
		if _, err := p1.createEndpoint(createEndpointRequest{NetworkID: "nid-web", EndpointID: eid,
			Interface: &endpointInterface{Address: fmt.Sprintf("10.67.0.%d/24", 5+i)}}); err != nil {
			t.Fatal(err)
		}
	}
	// The saved Join: its pair waits for Docker's move.
	if _, err := p1.join(joinRequest{NetworkID: "nid-web", EndpointID: savedID, SandboxKey: netns.Path(netnstest.UniqueName("fdk"))}); err != nil {
		t.Fatal(err)
	}
	kill()
	p1.wg.Wait()
	// The killed Join made its pair and saved nothing; the others' links
	// have Join's names too.
	pair := func(id, alias string) (host, peer string) {
		t.Helper()
		host, peer = linkNames(id)
		if err := makePair(host, peer, 0, api.EndpointMAC(netip.MustParseAddr("10.67.0.200"))); err != nil {
			t.Fatal(err)
		}
		if alias != "" {
			l, err := netlink.LinkByName(host)
			if err == nil {
				err = netlink.LinkSetAlias(l, alias)
			}
			if err != nil {
				t.Fatalf("alias of %s: %v", host, err)
			}
		}
		return host, peer
	}
	killed, killedPeer := pair(killedID, "")
	adopted, _ := pair(adoptedID, datapath.OwnerPrefix+"endpoint/x")
	other, _ := pair(otherID, "")
	saved, _ := linkNames(savedID)

	p2 := newTestPlugin(t, backend, state)
	ctx2, stop := context.WithCancel(context.Background())
	defer func() { stop(); p2.wg.Wait() }()
	p2.ctx = ctx2
	p2.resume()
	for _, name := range []string{killed, killedPeer} {
		if _, err := netlink.LinkByName(name); err == nil {
			t.Errorf("%s of the killed Join outlived the restart", name)
		}
	}
	for _, name := range []string{saved, adopted, other} {
		if _, err := netlink.LinkByName(name); err != nil {
			t.Errorf("%s was removed at the restart: %v", name, err)
		}
	}
}
