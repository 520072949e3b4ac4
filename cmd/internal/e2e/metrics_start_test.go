package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// What alerts and dashboards need from the first scrape: the map-full and
// drop series exist at 0 before the first event (eBPF), API requests are
// labelled by method and path apart, and idle sandboxes send no IPv6 that
// the datapath would count as unsupported-l3 drops (both datapaths).
func TestMetricsFromTheStart(t *testing.T) {
	onDatapathHosts(t, func(t *testing.T, h *host) {
		idle := h.name("idle")
		h.mustCtl("run", "-d", "--name", idle, "--", "sleep", "300")
		ns := h.sandbox(idle).NetNS

		out := netnstest.Run(t, strings.TrimPrefix(ns, "/var/run/netns/"), "sysctl", "-n", "net.ipv6.conf.eth0.disable_ipv6")
		if strings.TrimSpace(out) != "1" {
			t.Errorf("IPv6 on the sandbox's eth0: disable_ipv6=%q, want 1", strings.TrimSpace(out))
		}
		if out := netnstest.Run(t, strings.TrimPrefix(ns, "/var/run/netns/"), "ip", "-6", "-o", "addr", "show", "dev", "eth0"); strings.TrimSpace(out) != "" {
			t.Errorf("the sandbox's eth0 has IPv6 addresses (it would solicit routers): %s", out)
		}

		m := h.scrape()
		if v, ok := m[`fabric_api_requests_total{code="200",method="GET",route="/v1/status"}`]; !ok || v < 1 {
			t.Errorf("API requests not labelled by method and route apart: %v", grep(m, "fabric_api_requests_total"))
		}
		if h.dp != "ebpf" {
			return
		}
		for _, series := range []string{
			`fabric_datapath_map_full_total{map="ct"}`,
			`fabric_datapath_packets_total{direction="from-endpoint",reason="spoofed-ip",verdict="drop"}`,
			`fabric_datapath_packets_total{direction="to-uplink",reason="nat-exhausted",verdict="drop"}`,
		} {
			if _, ok := m[series]; !ok {
				t.Errorf("%s missing before its first event", series)
			}
		}
		// An idle sandbox for a few seconds (router solicitations start
		// within a second of the link coming up): no unsupported-l3 drops.
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			if v := m[`fabric_datapath_packets_total{direction="from-endpoint",reason="unsupported-l3",verdict="drop"}`]; v > 0 {
				t.Fatalf("an idle sandbox caused %v unsupported-l3 drops", v)
			}
			time.Sleep(500 * time.Millisecond)
			m = h.scrape()
		}
	})
}
