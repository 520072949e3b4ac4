package dns

import (
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/miekg/dns"
)

// queryIn asks the resolver at 127.0.0.11:53 from inside the namespace at
// path: the client socket is created, and the whole exchange done, on the
// thread netns.Do switched into it.
func queryIn(path, network, name string, qtype uint16) (*dns.Msg, error) {
	var r *dns.Msg
	err := netns.Do(path, func() error {
		c := dns.Client{Net: network, Timeout: 2 * time.Second}
		var err error
		r, _, err = c.Exchange(new(dns.Msg).SetQuestion(name, qtype), Address+":53")
		return err
	})
	return r, err
}

func mustQueryIn(t *testing.T, path, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	r, err := queryIn(path, network, name, qtype)
	if err != nil {
		t.Fatalf("query %s over %s in %s: %v", name, network, path, err)
	}
	return r
}

// writeResolvConf writes /etc/netns/NAME/resolv.conf (what `ip netns exec`
// bind-mounts over /etc/resolv.conf) and removes it when the test ends.
func writeResolvConf(t *testing.T, name string) {
	t.Helper()
	dir := filepath.Join("/etc/netns", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.RemoveAll(dir)
		os.Remove("/etc/netns") // only if no one else uses it
	})
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), ResolvConf(nil), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestNamespaceResolver serves a sandbox namespace at 127.0.0.11 and
// resolves from inside it, with a Go client and with the system resolver
// (getent through ip netns exec); then detach, re-attach, namespace
// re-creation and an agent restart.
func TestNamespaceResolver(t *testing.T) {
	netnstest.RequireRoot(t)
	// The upstream listens on the host's loopback: a forward reaching it
	// proves the forwarding sockets live in the agent's namespace.
	up := startUpstream(t, "127.0.0.1", ip("192.0.2.7"))
	cfg := Config{Upstreams: []string{up.addr}, UpstreamTimeout: time.Second}
	s := newTestServer(t, cfg)
	a, pathA := netnstest.New(t, "dnsa")
	b, _ := netnstest.New(t, "dnsb")
	c := netnstest.UniqueName("dnsc") // on another network only
	table := NewTable([]Record{
		{Name: a, Network: "n1", IP: ip("10.77.0.2"), Sandbox: a},
		{Name: "alpha", Network: "n1", IP: ip("10.77.0.2"), Sandbox: a},
		{Name: b, Network: "n1", IP: ip("10.77.0.3"), Sandbox: b},
		{Name: "pool", Network: "n1", IP: ip("10.77.0.3"), Sandbox: b},
		{Name: "pool", Network: "n1", IP: ip("10.77.0.2"), Sandbox: a},
		{Name: c, Network: "n2", IP: ip("10.78.0.4"), Sandbox: c},
	})
	s.SetTable(table)
	if err := s.Attach(a, pathA); err != nil {
		t.Fatal(err)
	}

	checkSandboxAnswers(t, a, pathA, b, c)
	checkSystemResolver(t, a, b, c)
	checkReattach(t, s, a, pathA, b)

	// The namespace is re-created under the same name: Attach notices.
	netnstest.Remove(a)
	if _, err := netns.CreateNamed(a); err != nil {
		t.Fatal(err)
	}
	checkAnswersAfterAttach(t, s, a, pathA, b, "in the re-created namespace")

	// Agent restart: a new server attached to the same sandbox serves it.
	s.Close()
	if _, err := queryIn(pathA, "udp", b+".", dns.TypeA); err == nil {
		t.Error("query answered after Close")
	}
	s2 := newTestServer(t, cfg)
	s2.SetTable(table)
	if err := s2.Attach(a, pathA); err != nil {
		t.Fatal(err)
	}
	if r := mustQueryIn(t, pathA, "udp", b+".", dns.TypeA); len(r.Answer) != 1 {
		t.Errorf("after restart: %v", r)
	}
	if out := netnstest.Run(t, a, "getent", "hosts", b); !strings.HasPrefix(out, "10.77.0.3 ") {
		t.Errorf("getent after restart: %q", out)
	}
}

// checkSandboxAnswers: from sandbox a (at pathA), b's name and the alias
// "pool" answer from the table, over UDP and TCP; c, on another network,
// and any other name are forwarded to the upstream (192.0.2.7).
func checkSandboxAnswers(t *testing.T, a, pathA, b, c string) {
	t.Helper()
	for _, network := range []string{"udp", "tcp"} {
		if r := mustQueryIn(t, pathA, network, b+".", dns.TypeA); !slices.Equal(answerAddrs(r), []netip.Addr{ip("10.77.0.3")}) {
			t.Errorf("%s: %s from %s: %v, want 10.77.0.3", network, b, a, answerAddrs(r))
		}
	}
	if r := mustQueryIn(t, pathA, "udp", "pool.", dns.TypeA); len(r.Answer) != 2 {
		t.Errorf("alias pool: %v, want both addresses", answerAddrs(r))
	}
	// Out of scope is the same as unknown: the upstream's answer.
	if r := mustQueryIn(t, pathA, "udp", c+".", dns.TypeA); !slices.Equal(answerAddrs(r), []netip.Addr{ip("192.0.2.7")}) {
		t.Errorf("%s on another network: %s %v, want the upstream's 192.0.2.7", c, dns.RcodeToString[r.Rcode], answerAddrs(r))
	}
	if r := mustQueryIn(t, pathA, "udp", "example.com.", dns.TypeA); !slices.Equal(answerAddrs(r), []netip.Addr{ip("192.0.2.7")}) {
		t.Errorf("forwarded name: %v, want the upstream's 192.0.2.7", answerAddrs(r))
	}
}

// checkSystemResolver: the same through glibc in sandbox a (getent), which
// asks AAAA, gets NOERROR/no data, and asks A.
func checkSystemResolver(t *testing.T, a, b, c string) {
	t.Helper()
	writeResolvConf(t, a)
	for name, want := range map[string]string{b: "10.77.0.3", "alpha": "10.77.0.2", "example.com": "192.0.2.7"} {
		out := netnstest.Run(t, a, "getent", "hosts", name)
		if !strings.HasPrefix(out, want+" ") {
			t.Errorf("getent hosts %s in %s: %q, want %s", name, a, out, want)
		}
	}
	if out, _ := netnstest.Cmd(a, "getent", "hosts", c).CombinedOutput(); !strings.HasPrefix(string(out), "192.0.2.7 ") {
		t.Errorf("getent hosts %s (no shared network): %q, want the upstream's 192.0.2.7", c, out)
	}
}

// checkReattach: attaching sandbox a again changes nothing; after Detach
// nobody answers in it, and Attach brings the answers back.
func checkReattach(t *testing.T, s *Server, a, pathA, b string) {
	t.Helper()
	s.mu.Lock()
	before := s.attached[a]
	s.mu.Unlock()
	if err := s.Attach(a, pathA); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	same := s.attached[a] == before
	s.mu.Unlock()
	if !same {
		t.Error("second Attach replaced the resolver")
	}

	s.Detach(a)
	checkAnswersAfterAttach(t, s, a, pathA, b, "after Detach")
}

// checkAnswersAfterAttach: in sandbox a (at pathA), where (why) no
// resolver is attached, nothing answers b's name until Attach, and then
// the answer comes.
func checkAnswersAfterAttach(t *testing.T, s *Server, a, pathA, b, why string) {
	t.Helper()
	if _, err := queryIn(pathA, "udp", b+".", dns.TypeA); err == nil {
		t.Errorf("query answered %s, before Attach", why)
	}
	if err := s.Attach(a, pathA); err != nil {
		t.Fatal(err)
	}
	mustQueryIn(t, pathA, "udp", b+".", dns.TypeA)
}

func TestAttachErrors(t *testing.T) {
	netnstest.RequireRoot(t)
	s := newTestServer(t, Config{Upstreams: []string{"127.0.0.1:53"}})
	err := s.Attach("x", "/nonexistent/netns")
	if err == nil {
		t.Fatal("Attach to a missing namespace succeeded")
	}
	if !strings.Contains(err.Error(), "attach dns to x") || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("error %q should name the sandbox and wrap the cause", err)
	}
}

// TestAttachBeforeLoUp: in a namespace whose lo is still down (ip netns
// add), the kernel lets a socket bind to 127.0.0.11 but replies would leave
// from 127.0.0.1 and be dropped by every client: Attach refuses.
func TestAttachBeforeLoUp(t *testing.T) {
	netnstest.RequireRoot(t)
	s := newTestServer(t, Config{Upstreams: []string{"127.0.0.1:53"}})
	name := netnstest.UniqueName("dnslo")
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { netnstest.Remove(name) })
	s.SetTable(NewTable([]Record{{Name: name, Network: "n", IP: ip("10.79.0.2"), Sandbox: name}}))
	if err := s.Attach(name, netns.Path(name)); !errors.Is(err, ErrLoopbackDown) {
		t.Fatalf("Attach with lo down: %v, want ErrLoopbackDown", err)
	}
	netnstest.Run(t, name, "ip", "link", "set", "lo", "up")
	if err := s.Attach(name, netns.Path(name)); err != nil {
		t.Fatalf("Attach with lo up: %v", err)
	}
	if r := mustQueryIn(t, netns.Path(name), "udp", name+".", dns.TypeA); len(r.Answer) != 1 {
		t.Errorf("own name after lo up: %v", r)
	}
}
