package e2e

import (
	"slices"
	"strings"
	"testing"
)

// TestPublishedPortSockRedirect: with --sock-redirect, a published port
// reached from the host (127.0.0.1 and the host's address) is served, its
// bytes are moved socket to socket (the counter grows), status says so,
// and from outside the port is served as before.
func TestPublishedPortSockRedirect(t *testing.T) {
	h := newHost(t, "--datapath", "ebpf", "--sock-redirect")
	st := h.status()
	if !slices.ContainsFunc(st.Details, func(d string) bool {
		return strings.HasPrefix(d, "socket redirection for host -> sandbox TCP (sockops, sk_msg)")
	}) {
		t.Fatalf("status does not show socket redirection: %q", st.Details)
	}
	web := h.name("web")
	h.serve(web, "-p", "8080:80")
	const redirected = `fabric_datapath_bytes_total{direction="socket",reason="sock-redirect",verdict="redirect"}`
	before := h.scrape()[redirected]
	for _, addr := range []string{"127.0.0.1:8080", hostUplinkIP + ":8080"} {
		if got := h.mustConnect(h.ns, "tcp", addr); !strings.HasPrefix(got, web+" ") {
			t.Errorf("published port from the host via %s: %q", addr, got)
		}
	}
	if after := h.scrape()[redirected]; after <= before {
		t.Errorf("%s: %v before, %v after two connections from the host", redirected, before, after)
	}
	if got := h.mustConnect(h.outside, "tcp", hostUplinkIP+":8080"); !strings.HasPrefix(got, web+" ") {
		t.Errorf("published port from outside: %q", got)
	}
}
