package e2e

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// reset runs `fabricd reset` with this host's settings in its namespace.
func (h *host) reset(extra ...string) (string, int) {
	h.t.Helper()
	args := append([]string{"--net=" + h.nsPath, filepath.Join(binDir, "fabricd"), "reset",
		"--state-dir", filepath.Join(h.dir, "state"), "--socket", h.socket, "--bpf-root", h.bpfRoot,
		"--node-name", h.ns, "--config", h.configFile()}, extra...)
	var out bytes.Buffer
	cmd := exec.Command("nsenter", args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), ee.ExitCode()
	} else if err != nil {
		h.t.Fatalf("fabricd reset: %v", err)
	}
	return out.String(), 0
}

// pinnedLinkIDs returns the kernel IDs of the program links pinned under
// the host's bpf root (TCX, XDP, cgroup socket hooks). A pinned program
// (an endpoint's, which runs as a clsact filter) is no link and is left out.
func (h *host) pinnedLinkIDs() map[string]link.ID {
	h.t.Helper()
	ids := map[string]link.ID{}
	for _, name := range h.pins() {
		pin := filepath.Join(h.bpfRoot, "links", name)
		if p, err := ebpf.LoadPinnedProgram(pin, nil); err == nil {
			p.Close()
			continue
		}
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			h.t.Fatalf("open pinned link %s: %v", name, err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			h.t.Fatalf("link info %s: %v", name, err)
		}
		ids[name] = info.ID
	}
	return ids
}

// The agent leaves its kernel state in place when it stops (traffic keeps
// flowing, a restart loses nothing); `fabricd reset` then removes all of
// it: sandboxes' namespaces and commands, links, the nftables table, pins,
// and the programs they held attached, including the cgroup socket hooks.
func TestResetRemovesAllKernelState(t *testing.T) {
	onDatapathHosts(t, func(t *testing.T, h *host) {
		net, web, idle := h.name("net"), h.name("web"), h.name("idle")
		h.mustCtl("network", "create", "--subnet", "10.98.0.0/24", net)
		h.serve(web, "--network", net, "-p", "8081:80")
		h.mustCtl("run", "-d", "--name", idle, "--", "sleep", "600")
		webSB, idleSB := h.sandbox(web), h.sandbox(idle)
		if _, err := os.Stat(filepath.Join("/etc/netns", filepath.Base(webSB.NetNS))); err != nil {
			t.Fatalf("precondition: sandbox resolv.conf: %v", err)
		}
		ids := h.pinnedLinkIDs()
		if h.dp == "ebpf" && ids["sock-connect4"] == 0 {
			t.Fatalf("precondition: no socket hook pinned; pins: %v", h.pins())
		}
		if out, code := h.reset(); code != 1 || !strings.Contains(out, "stop it first") {
			t.Fatalf("reset with the agent running: exit %d, want 1 and a refusal:\n%s", code, out)
		}
		if h.sandbox(web).State != "running" || len(h.pinnedLinkIDs()) != len(ids) {
			t.Fatal("a refused reset changed something")
		}
		h.stop()
		// Stopped on purpose with everything in place.
		if got := h.pinnedLinkIDs(); len(got) != len(ids) {
			t.Fatalf("pins after a clean stop: %v, want %d", got, len(ids))
		}

		out, code := h.reset()
		if code != 0 {
			t.Fatalf("fabricd reset: exit %d\n%s", code, out)
		}
		if got := strings.Join(h.links(), ","); got != "lo ,up0 " {
			t.Errorf("links after reset: %s, want only lo and up0", got)
		}
		if tables := run(t, "ip", "netns", "exec", h.ns, "nft", "list", "tables"); strings.TrimSpace(tables) != "" {
			t.Errorf("nftables tables after reset:\n%s", tables)
		}
		if _, err := os.Stat(h.bpfRoot); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("bpf root %s after reset: %v (pins %v)", h.bpfRoot, err, h.pins())
		}
		for name, id := range ids {
			if l, err := link.NewFromID(id); err == nil {
				l.Close()
				t.Errorf("program link %s (id %d) still attached after reset", name, id)
			}
		}
		for _, sb := range []string{webSB.NetNS, idleSB.NetNS, "/etc/netns/" + filepath.Base(webSB.NetNS)} {
			if _, err := os.Stat(sb); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s after reset: %v", sb, err)
			}
		}
		for _, pid := range []int{webSB.PID, idleSB.PID} {
			if netnstest.ProcessRunning(pid) {
				t.Errorf("sandbox command %d still runs after reset", pid)
			}
		}
		if out, code := h.reset("--purge-state"); code != 0 {
			t.Fatalf("second reset with --purge-state: exit %d\n%s", code, out)
		}
		if _, err := os.Stat(filepath.Join(h.dir, "state")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("state dir after --purge-state: %v", err)
		}
	})
}
