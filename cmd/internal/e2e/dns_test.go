package e2e

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/miekg/dns"
)

// fakeUpstream answers outside.example. with 203.0.113.7 and NXDOMAIN for
// everything else (the test binary in FABRIC_E2E_HELPER=dns mode).
func fakeUpstreamMain(addr string) int {
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 && strings.EqualFold(r.Question[0].Name, "outside.example.") && r.Question[0].Qtype == dns.TypeA {
			rr, _ := dns.NewRR("outside.example. 30 IN A 203.0.113.7")
			m.Answer = append(m.Answer, rr)
		} else {
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})
	srv := &dns.Server{Addr: addr, Net: "udp", Handler: h}
	if err := srv.ListenAndServe(); err != nil {
		return 1
	}
	return 0
}

// resolve runs getent hosts NAME in a sandbox (through ip netns exec, which
// puts the sandbox's resolv.conf in place) and returns the first address.
func resolve(sandbox, name string) (string, bool) {
	out, err := netnstest.Cmd(sandbox, "getent", "hosts", name).Output()
	if err != nil {
		return "", false
	}
	f := strings.Fields(string(out))
	if len(f) == 0 {
		return "", false
	}
	return f[0], true
}

func TestEmbeddedDNS(t *testing.T) {
	h := newHost(t, "--dns-upstreams", outsideUplinkIP+":53")
	self, _ := os.Executable()
	up := netnstest.Cmd(h.outside, "env", "FABRIC_E2E_HELPER=dns", self, outsideUplinkIP+":53")
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = up.Process.Kill(); _ = up.Wait() })

	n1, n2 := h.name("n1"), h.name("n2")
	h.mustCtl("network", "create", "--subnet", "10.36.1.0/24", n1)
	h.mustCtl("network", "create", "--subnet", "10.36.2.0/24", n2)
	a, b, c, d := h.name("a"), h.name("b"), h.name("c"), h.name("d")
	h.mustCtl("run", "-d", "--name", a, "--network", n1, "--alias", "web", "--", "sleep", "300")
	h.mustCtl("run", "-d", "--name", b, "--network", n1, "--", "sleep", "300")
	h.mustCtl("run", "-d", "--name", c, "--network", n2, "--", "sleep", "300")
	h.mustCtl("run", "-d", "--name", d, "--network", n2, "--", "sleep", "300")
	h.mustCtl("network", "connect", "--alias", "both", n1, d)

	conf, err := os.ReadFile("/etc/netns/" + a + "/resolv.conf")
	if err != nil || !strings.Contains(string(conf), "nameserver 127.0.0.11") {
		t.Fatalf("sandbox resolv.conf: %v %q", err, conf)
	}
	for _, tc := range []struct {
		from, name, want string // want "" = must not resolve
	}{
		{b, a, h.ip(a, n1)},
		{b, "web", h.ip(a, n1)},
		{b, strings.ToUpper(a), h.ip(a, n1)},
		{c, a, ""},                            // c shares no network with a
		{c, d, h.ip(d, n2)},                   // the address on the shared network
		{b, d, h.ip(d, n1)},                   // ... which for b is n1's
		{b, "both", h.ip(d, n1)},              // network connect --alias
		{c, "both", ""},                       // that alias belongs to d's n1 endpoint only
		{b, "outside.example", "203.0.113.7"}, // forwarded upstream
	} {
		got, ok := resolve(tc.from, tc.name)
		if tc.want == "" && ok {
			t.Errorf("%s resolved %s to %s; want no answer (out of scope)", tc.from, tc.name, got)
		}
		if tc.want != "" && got != tc.want {
			t.Errorf("%s resolved %s to %q (%v), want %s", tc.from, tc.name, got, ok, tc.want)
		}
	}
	// A foreground run uses the sandbox's resolver too.
	out := h.mustCtl("run", "--rm", "--name", h.name("fg"), "--network", n1, "--", "getent", "hosts", "web")
	if !strings.HasPrefix(out, h.ip(a, n1)) {
		t.Fatalf("fabricctl run: getent hosts web = %q", out)
	}
	var st api.Status
	if o, _, _ := h.ctl("-o", "json", "status"); json.Unmarshal([]byte(o), &st) != nil {
		t.Fatalf("status -o json: %q", o)
	}
	if st.DNS == nil || st.DNS.Resolvers < 4 || st.DNS.Records < 5 {
		t.Fatalf("status DNS section: %+v", st.DNS)
	}

	// The agent is killed and restarted: every resolver comes back.
	h.kill9()
	h.start()
	if got, _ := resolve(b, "web"); got != h.ip(a, n1) {
		t.Fatalf("after kill -9 and restart, web resolves to %q", got)
	}
	// A removed sandbox's name goes at once.
	h.mustCtl("sandbox", "rm", a)
	if got, ok := resolve(b, "web"); ok {
		t.Fatalf("web still resolves to %s after its sandbox was removed", got)
	}
	if _, err := os.Stat("/etc/netns/" + a); !os.IsNotExist(err) {
		t.Fatalf("/etc/netns/%s left after sandbox rm: %v", a, err)
	}
}
