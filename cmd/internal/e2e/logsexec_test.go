package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// fabricctl logs prints a run -d command's output (and -f follows it to
// the end); fabricctl exec runs a command in an existing sandbox with its
// exit code.
func TestLogsAndExec(t *testing.T) {
	h := newHost(t)
	web, short := h.name("web"), h.name("short")
	h.mustCtl("run", "-d", "--name", web, "--", "sh", "-c", "echo hello-from-web; exec sleep 300")
	var out string
	if !netnstest.Poll(10*time.Second, func() bool { out = h.mustCtl("logs", web); return strings.Contains(out, "hello-from-web") }) {
		t.Errorf("logs %s: %q", web, out)
	}
	h.mustCtl("run", "-d", "--name", short, "--", "sh", "-c", "echo first; sleep 1; echo last")
	if out := h.mustCtl("logs", "-f", short); !strings.Contains(out, "first\nlast\n") {
		t.Errorf("logs -f %s did not follow to the end: %q", short, out)
	}

	ip := h.ip(web, "bridge")
	if out := h.mustCtl("exec", web, "--", "ip", "-o", "addr", "show", "eth0"); !strings.Contains(out, ip+"/") {
		t.Errorf("exec %s -- ip addr: %q, want %s", web, out, ip)
	}
	if out := h.mustCtl("exec", web, "--", "cat", "/etc/resolv.conf"); !strings.Contains(out, "127.0.0.11") {
		t.Errorf("exec does not see the sandbox's resolv.conf: %q", out)
	}
	if _, _, code := h.ctl("exec", web, "--", "sh", "-c", "exit 7"); code != 7 {
		t.Errorf("exec exit code %d, want the command's 7", code)
	}
	if _, _, code := h.ctl("exec", web, "--", "/nonexistent"); code != 127 {
		t.Errorf("exec of a missing command: exit %d, want 127", code)
	}
	if _, errOut, code := h.ctl("exec", h.name("nosuch"), "--", "true"); code != 1 || !strings.Contains(errOut, "not found") {
		t.Errorf("exec in a missing sandbox: exit %d, %q", code, errOut)
	}
	if sb := h.sandbox(web); sb.State != "running" {
		t.Errorf("exec changed the sandbox: %s", sb.State)
	}
}
