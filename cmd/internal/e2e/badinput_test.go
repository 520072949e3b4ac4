package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// Every rejected command exits 1 with a message that says what was wrong,
// and leaves records, links, nftables and namespaces exactly as they were.
func TestBadInputIsRejectedAndChangesNothing(t *testing.T) {
	onDatapathHosts(t, func(t *testing.T, h *host) {
		n, small, holder := h.name("n"), h.name("small"), h.name("hold")
		h.mustCtl("network", "create", "--subnet", "10.40.0.0/24", n)
		// 10.41.0.0/30 inside a /24: .0 is the network address and .1 the
		// gateway, so the range has exactly two dynamic addresses.
		h.mustCtl("network", "create", "--subnet", "10.41.0.0/24", "--ip-range", "10.41.0.0/30", small)
		h.mustCtl("run", "-d", "--name", holder, "--network", n, "--ip", "10.40.0.9", "--", "sleep", "300")
		h.mustCtl("run", "-d", "--name", h.name("s1"), "--network", small, "--", "sleep", "300")
		h.mustCtl("run", "-d", "--name", h.name("s2"), "--network", small, "--", "sleep", "300")
		notNS := t.TempDir()

		before := h.snapshot()
		x := h.name("x")
		cases := []struct {
			args []string
			want string // part of the error message
		}{
			{[]string{"network", "create", "--subnet", "10.50.0.5/24", x}, "10.50.0.0/24"},
			{[]string{"network", "create", "--subnet", "10.50.0.0/33", x}, "subnet"},
			{[]string{"network", "create", "--subnet", "banana", x}, "CIDR"},
			{[]string{"network", "create", "--subnet", "10.50.0.0/24", "--gateway", "10.51.0.1", x}, "gateway"},
			{[]string{"network", "create", "--subnet", "10.50.0.0/24", "--gateway", "10.50.0.255", x}, "broadcast"},
			{[]string{"network", "create", "--subnet", "10.50.0.0/24", "--ip-range", "10.51.0.0/25", x}, "range"},
			{[]string{"network", "create", "--gateway", "10.50.0.1", x}, "--subnet"},
			{[]string{"network", "create", "--subnet", "10.40.0.0/16", x}, "overlaps"},
			{[]string{"network", "create", "--subnet", "192.0.2.0/25", x}, "host route"},
			{[]string{"network", "create", n}, "already exists"},
			{[]string{"network", "create", "-d", "overlay", "--subnet", "10.50.0.0/24", x}, "overlay networks need a cluster"},
			{[]string{"network", "create", "-o", "mtu=abc", x}, "MTU"},
			{[]string{"network", "create", "-o", "colour=blue", x}, "unknown option"},
			{[]string{"network", "create", "-o", "bridge_name=up0", x}, map[string]string{"kernel": "up0", "ebpf": "makes no bridge"}[h.dp]},
			{[]string{"network", "create", "host"}, "reserved"},
			{[]string{"network", "create", "a/b"}, "name"},
			{[]string{"network", "create", "--", "-" + x}, "must not start with '-'"},
			{[]string{"run", "-d", "--name=-" + x, "--", "true"}, "must not start with '-'"},
			{[]string{"run", "-d", "--name", x, "--alias=-" + x, "--", "true"}, "is not valid: an alias is one DNS label"},
			{[]string{"network", "connect", "--alias=-" + x, n, h.name("s1")}, "is not valid: an alias is one DNS label"},
			{[]string{"network", "rm", "bridge"}, "default"},
			{[]string{"network", "rm", n}, "endpoint"},
			{[]string{"network", "rm", h.name("nosuch")}, "not found"},
			{[]string{"run", "-d", "--name", x, "--network", n, "--ip", "10.40.0.300", "--", "true"}, "IPv4"},
			{[]string{"run", "-d", "--name", x, "--network", n, "--ip", "10.99.0.5", "--", "true"}, "subnet"},
			{[]string{"run", "-d", "--name", x, "--network", n, "--ip", "10.40.0.1", "--", "true"}, "gateway"},
			{[]string{"run", "-d", "--name", x, "--network", n, "--ip", "10.40.0.255", "--", "true"}, "broadcast"},
			{[]string{"run", "-d", "--name", x, "--network", n, "--ip", "10.40.0.0", "--", "true"}, "network address"},
			{[]string{"run", "-d", "--name", x, "--network", n, "--ip", "10.40.0.9", "--", "true"}, "in use"},
			{[]string{"run", "-d", "--name", x, "--network", small, "--", "true"}, "exhausted"},
			{[]string{"run", "-d", "--name", x, "--network", h.name("nosuch"), "--", "true"}, "not found"},
			{[]string{"run", "-d", "--name", x, "-p", "70000:80", "--", "true"}, "65535"},
			{[]string{"run", "-d", "--name", x, "-p", "8080:80/sctp", "--", "true"}, "tcp or udp"},
			{[]string{"run", "-d", "--name", x, "-p", "8080", "--", "true"}, "port"},
			{[]string{"run", "-d", "--name", x, "--network", "none", "-p", "8080:80", "--", "true"}, "-p needs a sandbox address to publish, and --network none gives none"},
			{[]string{"run", "-d", "--name", x, "--network", "none", "--ip", "10.40.0.5", "--", "true"}, "--ip cannot be given with --network none"},
			{[]string{"run", "-d", "--name", x, "--network", "container:" + h.name("nosuch"), "--", "true"}, "not found"},
			{[]string{"run", "-d", "--name", holder, "--", "true"}, "already exists"},
			{[]string{"run", "-d", "--name", "bad/name", "--", "true"}, "name"},
			{[]string{"run", "-d", "--name", x, "--", "/nonexistent/cmd"}, "start command"},
			{[]string{"run", "-d", "--name", x}, "command"},
			{[]string{"network", "connect", n, h.name("nosuch")}, "not found"},
			{[]string{"network", "connect", n, notNS}, "not a network namespace"},
			{[]string{"network", "connect", n, holder}, "already connected"},
			{[]string{"network", "connect", small, holder}, "exhausted"},
			{[]string{"network", "disconnect", small, holder}, "not connected"},
			{[]string{"sandbox", "rm", h.name("nosuch")}, "not found"},
		}
		for _, c := range cases {
			out, errOut, code := h.ctl(c.args...)
			if code != 1 {
				t.Errorf("fabricctl %s: exit %d, want 1 (stdout %q stderr %q)", strings.Join(c.args, " "), code, out, errOut)
				continue
			}
			if !strings.Contains(errOut, c.want) {
				t.Errorf("fabricctl %s: error %q does not mention %q", strings.Join(c.args, " "), strings.TrimSpace(errOut), c.want)
			}
		}
		diffSnapshots(t, "after rejected commands", before, h.snapshot())
	})
}

func TestAPIRejectsMalformedBodiesAndIsPrivate(t *testing.T) {
	h := newHost(t)
	st, err := os.Stat(h.socket)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want 0600", st.Mode().Perm())
	}
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", h.socket)
	}}}
	// Names are the test's own; one is a namespace that already exists,
	// which must not turn a malformed body into a name clash: the body is
	// checked first.
	x, y := h.name("x"), h.name("y")
	taken, _ := netnstest.New(t, "fx")
	before := h.snapshot()
	for _, tc := range []struct {
		method, path, body string
		status             int
	}{
		{"POST", "/v1/networks", `{"name":"` + x + `","subnett":"10.60.0.0/24"}`, 400},
		{"POST", "/v1/networks", `{"name":`, 400},
		{"POST", "/v1/networks", `{"name":"` + x + `"} {"name":"` + y + `"}`, 400},
		{"POST", "/v1/networks", `[1,2,3]`, 400},
		{"POST", "/v1/sandboxes", `{"name":"` + x + `","command":"sleep"}`, 400},
		{"POST", "/v1/sandboxes", `{"name":"` + x + `","ports":["1:2:3:4"],"command":["true"]}`, 400},
		{"POST", "/v1/sandboxes", `{"name":"` + taken + `","ports":["1:2:3:4"],"command":["true"]}`, 400},
		{"POST", "/v1/sandboxes", `{"name":"` + taken + `","aliases":["-bad"],"command":["true"]}`, 400},
		{"POST", "/v1/networks", `{"name":"` + strings.Repeat("a", 2<<20) + `"}`, 413},
		{"PUT", "/v1/sandboxes/nosuch/process", `{"pid":1}`, 404},
		{"GET", "/v1/nosuch", ``, 404},
		{"DELETE", "/v1/networks/nosuch", ``, 404},
	} {
		req, _ := http.NewRequest(tc.method, "http://fabricd"+tc.path, strings.NewReader(tc.body))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e api.Error
		if resp.StatusCode != tc.status || json.Unmarshal(body, &e) != nil || e.Message == "" || e.Code == "" {
			t.Errorf("%s %s: status %d body %.200q; want %d with {error, code}", tc.method, tc.path, resp.StatusCode, body, tc.status)
		}
	}
	diffSnapshots(t, "after rejected API requests", before, h.snapshot())
}
