package e2e

import (
	"strings"
	"testing"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// inspect never reports a bridge that does not exist: the kernel datapath
// reports (and has) fabric0 and the bridge_name asked for; the eBPF
// datapath has no bridges, reports none, and refuses -o bridge_name with
// a reason instead of accepting a name nothing carries.
func TestBridgeNamesMatchTheKernel(t *testing.T) {
	onDatapathHosts(t, func(t *testing.T, h *host) {
		hasLink := func(name string) bool {
			for _, l := range h.links() {
				if strings.Fields(l)[0] == name {
					return true
				}
			}
			return false
		}
		inspect := func(name string) api.Network {
			var nets []api.Network
			h.ctlJSON(&nets, "network", "inspect", name)
			return nets[0]
		}
		plain := h.name("plain")
		h.mustCtl("network", "create", plain)
		for _, name := range []string{"bridge", plain} {
			n := inspect(name)
			if n.Bridge != "" && !hasLink(n.Bridge) {
				t.Errorf("network %s reports bridge %q, which does not exist", name, n.Bridge)
			}
			if _, ok := n.Options["bridge_name"]; ok && h.dp == "ebpf" {
				t.Errorf("network %s reports option bridge_name on the eBPF datapath: %v", name, n.Options)
			}
			if h.dp == "kernel" && n.Bridge == "" {
				t.Errorf("network %s reports no bridge on the kernel datapath", name)
			}
		}
		if h.dp == "kernel" && inspect("bridge").Bridge != "fabric0" {
			t.Errorf("default network's bridge is %q, want fabric0", inspect("bridge").Bridge)
		}

		named, br := h.name("named"), "br"+h.prefix[1:7]
		out, errOut, code := h.ctl("network", "create", "-o", "bridge_name="+br, named)
		switch h.dp {
		case "kernel":
			if code != 0 || inspect(named).Bridge != br || !hasLink(br) {
				t.Errorf("bridge_name on the kernel datapath: exit %d %s%s, bridge %q exists %v", code, out, errOut, inspect(named).Bridge, hasLink(br))
			}
		case "ebpf":
			if code != 1 || !strings.Contains(errOut, "makes no bridge") {
				t.Errorf("bridge_name on the eBPF datapath: exit %d, %q; want a refusal", code, errOut)
			}
			if _, _, code := h.ctl("network", "inspect", named); code == 0 {
				t.Errorf("a refused network create left network %s", named)
			}
		}
	})
}
