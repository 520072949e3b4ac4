package e2e

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// The agent's side of the hostile-sandbox suite (issue 14): what a
// sandbox, or a client of the API, could do to the host or to other
// sandboxes through connect-by-path, network subnets and the embedded DNS
// server, replayed on both datapaths.

// nsSnapshot is what `ip` shows of a namespace: links, addresses, routes.
func nsSnapshot(t *testing.T, ns string) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"-o", "link", "show"}, {"-o", "addr", "show"},
		{"-4", "route", "show", "table", "all"}, {"-6", "route", "show", "table", "main"},
	} {
		b.WriteString(run(t, append([]string{"ip", "-n", ns}, args...)...))
	}
	return b.String()
}

// TestAttachForeignNamespaceLeavesItAsFound: a namespace fabric did not
// create, with its own default route (via 198.51.100.1 dev ens3) and its
// own eth0, is connected by path and disconnected again: fabric uses the
// next free name, adds only the subnet route, says it left the default
// route alone, and the disconnect leaves links, addresses and routes
// exactly as they were.
func TestAttachForeignNamespaceLeavesItAsFound(t *testing.T) {
	onDatapathHosts(t, func(t *testing.T, h *host) {
		t.Cleanup(func() { releaseHeldNamespaces(h) })
		net1 := h.name("n")
		h.mustCtl("network", "create", "--subnet", "10.57.1.0/24", net1)
		peer := h.name("p")
		h.serve(peer, "--network", net1)

		ext, extPath := netnstest.New(t, "fx")
		for _, args := range [][]string{
			{"link", "set", "lo", "up"},
			{"link", "add", "ens3", "type", "veth", "peer", "name", "ens3p"},
			{"addr", "add", "198.51.100.2/24", "dev", "ens3"},
			{"link", "set", "ens3p", "up"},
			{"link", "set", "ens3", "up"},
			{"route", "add", "default", "via", "198.51.100.1", "dev", "ens3"},
			{"link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"},
		} {
			run(t, append([]string{"ip", "-n", ext}, args...)...)
		}
		before := nsSnapshot(t, ext)

		var ep api.Endpoint
		h.ctlJSON(&ep, "network", "connect", net1, extPath)
		if ep.IfName != "eth1" {
			t.Errorf("connect picked %s in a namespace that has eth0, want eth1", ep.IfName)
		}
		if ep.Gateway != "" || !strings.Contains(ep.DefaultRoute, "198.51.100.1") {
			t.Errorf("connect result gateway %q, default_route %q: want the namespace's own default route reported as left alone", ep.Gateway, ep.DefaultRoute)
		}
		routes := run(t, "ip", "-n", ext, "-4", "route", "show")
		if !strings.Contains(routes, "default via 198.51.100.1 dev ens3") || strings.Count(routes, "default") != 1 {
			t.Errorf("routes while connected:\n%s\nwant the namespace's own default route, alone", routes)
		}
		if !strings.Contains(routes, "10.57.1.0/24 dev eth1") {
			t.Errorf("routes while connected:\n%s\nwant the subnet route on eth1", routes)
		}
		if out, err := h.connect(ext, "tcp", h.ip(peer, net1)+":80"); err != nil || !strings.HasPrefix(out, peer) {
			t.Errorf("the attached namespace cannot reach a sandbox on its network: %q %v", out, err)
		}
		sb := h.sandbox(extPath)
		if sb.Origin != extPath || len(sb.Endpoints) != 1 || sb.Endpoints[0].DefaultRoute == "" {
			t.Errorf("inspect of the attached namespace: %+v", sb)
		}

		h.mustCtl("network", "disconnect", net1, extPath)
		if after := nsSnapshot(t, ext); after != before {
			t.Fatalf("namespace not left as found.\nbefore:\n%s\nafter:\n%s", before, after)
		}
		if _, _, code := h.ctl("sandbox", "inspect", extPath); code == 0 {
			t.Error("the namespace is still a sandbox after its last disconnect")
		}
	})
}

// TestHostileConnectAndSubnets: connecting the host's or the agent's own
// namespace, and networks on special-use ranges, are refused and change
// nothing on the host.
func TestHostileConnectAndSubnets(t *testing.T) {
	onDatapathHosts(t, func(t *testing.T, h *host) {
		// IPv4 only: the kernel adds up0's IPv6 link-local routes a moment
		// after it is up, whoever runs. Links through h.links, which skips
		// ip's notes about namespaces going away meanwhile.
		routesBefore := run(t, "ip", "-4", "-n", h.ns, "route", "show", "table", "all")
		linksBefore := h.links()
		var netsBefore []api.Network
		h.ctlJSON(&netsBefore, "network", "ls")
		for _, path := range []string{"/proc/1/ns/net", "/proc/" + strconv.Itoa(h.agent.Process.Pid) + "/ns/net", h.nsPath} {
			_, errOut, code := h.ctl("network", "connect", "bridge", path)
			if code == 0 || !(strings.Contains(errOut, "host") || strings.Contains(errOut, "permission denied")) {
				t.Errorf("connect bridge %s: exit %d %q, want refused as the host's namespace", path, code, errOut)
			}
		}
		for _, subnet := range []string{"169.254.0.0/16", "224.0.0.0/8", "127.0.0.0/16", "0.0.0.0/8", "255.255.255.0/24", "240.0.0.0/8"} {
			_, errOut, code := h.ctl("network", "create", "--subnet", subnet, h.name("su"))
			if code == 0 || !strings.Contains(errOut, "special") {
				t.Errorf("network create --subnet %s: exit %d %q, want refused (special-use)", subnet, code, errOut)
			}
		}
		var netsAfter []api.Network
		h.ctlJSON(&netsAfter, "network", "ls")
		if len(netsAfter) != len(netsBefore) {
			t.Errorf("refused creates changed the networks: %d → %d", len(netsBefore), len(netsAfter))
		}
		if after := run(t, "ip", "-4", "-n", h.ns, "route", "show", "table", "all"); after != routesBefore {
			t.Errorf("host routes changed:\nbefore:\n%s\nafter:\n%s", routesBefore, after)
		}
		if after := h.links(); !slices.Equal(after, linksBefore) {
			t.Errorf("host links changed:\nbefore:\n%s\nafter:\n%s", linksBefore, after)
		}
	})
}

// hostileUpstream serves DNS on the outside namespace: every A question is
// answered with 203.0.113.9, except names starting with "slow", which it
// never answers. It counts the questions per name.
type hostileUpstream struct {
	asked map[string]*atomic.Int64
}

func startHostileUpstream(t *testing.T, outside string) *hostileUpstream {
	t.Helper()
	var pc net.PacketConn
	err := netns.Do(filepath.Join(netns.RunDir, outside), func() error {
		var err error
		pc, err = net.ListenPacket("udp", outsideUplinkIP+":53")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	u := &hostileUpstream{asked: map[string]*atomic.Int64{"internalprobe.example.": {}}}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		if len(r.Question) != 1 {
			return
		}
		q := r.Question[0]
		if c := u.asked[strings.ToLower(q.Name)]; c != nil {
			c.Add(1)
		}
		if strings.HasPrefix(q.Name, "slow") {
			return
		}
		m := new(dns.Msg).SetReply(r)
		if q.Qtype == dns.TypeA {
			rr, _ := dns.NewRR(q.Name + " 30 IN A 203.0.113.9")
			m.Answer = append(m.Answer, rr)
		}
		_ = w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return u
}

// TestHostileDNS: names cannot be hijacked (an alias github.com is
// refused, a name on another network is not answered for sandboxes off
// it), one sandbox flooding a silent upstream does not starve another,
// and a sandbox only on an internal network gets no upstream.
func TestHostileDNS(t *testing.T) {
	onDatapaths(t, func(t *testing.T, dp string) {
		h := newHost(t, "--datapath", dp, "--dns-upstreams", outsideUplinkIP+":53")
		up := startHostileUpstream(t, h.outside)
		netA, netB, netI := h.name("a"), h.name("b"), h.name("i")
		h.mustCtl("network", "create", "--subnet", "10.58.1.0/24", netA)
		h.mustCtl("network", "create", "--subnet", "10.58.2.0/24", netB)
		h.mustCtl("network", "create", "--internal", "--subnet", "10.58.3.0/24", netI)
		sa, sb, si, web := h.name("sa"), h.name("sb"), h.name("si"), h.name("web")

		// The hijack: an alias for an outside name.
		for _, args := range [][]string{
			{"run", "-d", "--name", h.name("hj"), "--network", netB, "--alias", "github.com", "--", "sleep", "300"},
			{"run", "-d", "--name", "github.com", "--network", netB, "--", "sleep", "300"},
		} {
			if _, errOut, code := h.ctl(args...); code == 0 || !strings.Contains(errOut, "label") {
				t.Errorf("fabricctl %s: exit %d %q, want refused (one DNS label)", strings.Join(args, " "), code, errOut)
			}
		}
		h.mustCtl("run", "-d", "--name", sa, "--network", netA, "--", "sleep", "300")
		h.mustCtl("run", "-d", "--name", sb, "--network", netB, "--", "sleep", "300")
		h.mustCtl("run", "-d", "--name", web, "--network", netB, "--", "sleep", "300")
		h.mustCtl("run", "-d", "--name", si, "--network", netI, "--", "sleep", "300")
		if _, _, code := h.ctl("network", "connect", "--alias", "github.com", netA, sb); code == 0 {
			t.Error("network connect --alias github.com accepted")
		}
		for _, tc := range []struct{ from, name, want string }{
			{sa, "github.com", "203.0.113.9"},
			{sb, "github.com", "203.0.113.9"},
			{sb, web, h.ip(web, netB)},
			{sa, web, "203.0.113.9"}, // not on netB: the outside's answer, not NXDOMAIN
		} {
			if got, _ := resolve(tc.from, tc.name); got != tc.want {
				t.Errorf("%s resolves %s to %q, want %s", tc.from, tc.name, got, tc.want)
			}
		}

		// The internal-only sandbox: its network's names, no upstream.
		h.mustCtl("run", "-d", "--name", h.name("si2"), "--network", netI, "--", "sleep", "300")
		if got, _ := resolve(si, h.name("si2")); got != h.ip(h.name("si2"), netI) {
			t.Errorf("internal sandbox resolves its neighbour to %q", got)
		}
		if got, ok := resolve(si, "internalprobe.example"); ok {
			t.Errorf("internal-only sandbox resolved an outside name to %s", got)
		}
		if n := up.asked["internalprobe.example."].Load(); n != 0 {
			t.Errorf("the upstream was asked %d times by an internal-only sandbox", n)
		}

		checkDNSFloodShared(t, h, sa, sb)
	})
}

// checkDNSFloodShared: 300 queries at once from sandbox sa to names the
// upstream never answers; sb keeps resolving, and most of sa's queries
// beyond its share are refused.
func checkDNSFloodShared(t *testing.T, h *host, sa, sb string) {
	t.Helper()
	var flood net.Conn
	err := netns.Do(netns.Path(sa), func() error {
		var err error
		flood, err = net.Dial("udp", "127.0.0.11:53")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer flood.Close()
	st0 := h.status()
	for i := range 300 {
		m := new(dns.Msg).SetQuestion("slow"+strconv.Itoa(i)+".example.", dns.TypeA)
		b, _ := m.Pack()
		if _, err := flood.Write(b); err != nil {
			t.Fatal(err)
		}
		if i%10 == 9 {
			time.Sleep(time.Millisecond) // pace: a burst would only overflow the socket buffer
		}
	}
	start := time.Now()
	got, ok := resolve(sb, "outside.example")
	if !ok || got != "203.0.113.9" {
		t.Errorf("during the flood another sandbox resolves outside.example to %q (%v) after %v, want 203.0.113.9", got, ok, time.Since(start))
	}
	// Its share is 128 of the 256 slots: most of the rest was refused
	// at once (some of the burst may be dropped by the socket).
	if st1 := h.status(); st1.DNS == nil || st0.DNS == nil || st1.DNS.Failed-st0.DNS.Failed < 100 {
		t.Errorf("DNS status after the flood %+v: want at least 100 of its forwards refused beyond its share", st1.DNS)
	}
}

// status returns the agent's status (exit 1 only means it has warnings).
func (h *host) status() api.Status {
	h.t.Helper()
	var st api.Status
	out, errOut, code := h.ctl("-o", "json", "status")
	if code > 1 || json.Unmarshal([]byte(out), &st) != nil {
		h.t.Fatalf("status: exit %d %q %q", code, out, errOut)
	}
	return st
}

// releaseHeldNamespaces unmounts the references to namespaces the agent
// holds under its state dir, in case the test failed with one connected.
func releaseHeldNamespaces(h *host) {
	dir := filepath.Join(h.dir, "state", "netns")
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		_ = unix.Unmount(filepath.Join(dir, e.Name()), unix.MNT_DETACH)
	}
}
