package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// unitSetting returns the value of key= in deploy/fabricd.service ("" if
// the unit does not set it).
func unitSetting(t *testing.T, key string) string {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, "deploy", "fabricd.service"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	val := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if v, ok := strings.CutPrefix(line, key+"="); ok {
			val = v
		}
	}
	return val
}

// unitPrivileges is setpriv's view of the unit: the capability bounding set
// and no_new_privs exactly as deploy/fabricd.service sets them, which is
// what every command the agent starts inherits.
func unitPrivileges(t *testing.T) []string {
	t.Helper()
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("skipping: needs setpriv (util-linux)")
	}
	caps := strings.Fields(unitSetting(t, "CapabilityBoundingSet"))
	if len(caps) == 0 {
		t.Fatal("deploy/fabricd.service sets no CapabilityBoundingSet")
	}
	set := "-all"
	for _, c := range caps {
		set += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
	}
	wrap := []string{"setpriv", "--bounding-set", set}
	if unitSetting(t, "NoNewPrivileges") == "yes" {
		wrap = append(wrap, "--no-new-privs")
	}
	return append(wrap, "--")
}

// The README's `run -d` example works under the systemd unit's privileges:
// the command binds port 80 in its sandbox and is reachable there and
// through the published port, on both datapaths.
func TestRunDetachedUnderSystemdUnitPrivileges(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("skipping: needs python3 (the README's example server)")
	}
	onDatapaths(t, func(t *testing.T, dp string) {
		h := makeHost(t, []string{"default"}, unitPrivileges(t), []string{"--datapath", dp})
		web := h.name("web")
		h.mustCtl("run", "-d", "--name", web, "-p", "8080:80", "--", "python3", "-m", "http.server", "80")
		sb := h.sandbox(web)
		ok := netnstest.Poll(15*time.Second, func() bool {
			out, _ := exec.Command("nsenter", "--net="+sb.NetNS, "cat", "/proc/net/tcp", "/proc/net/tcp6").Output()
			return strings.Contains(string(out), ":0050 ")
		})
		if !ok {
			logText, _ := os.ReadFile(h.sandbox(web).LogPath)
			t.Fatalf("nothing listens on port 80 in %s (state %s); command log:\n%s", web, h.sandbox(web).State, logText)
		}
		get := func(ns, url string) error {
			cmd := exec.Command("nsenter", "--net="+ns, "python3", "-c",
				"import sys,urllib.request; sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=3).status == 200 else 1)", url)
			out, err := cmd.CombinedOutput()
			if err != nil {
				return &cmdError{url: url, err: err, out: string(out)}
			}
			return nil
		}
		ip := h.ip(web, "bridge")
		if err := get(h.nsPath, "http://"+ip+":80/"); err != nil {
			t.Errorf("from the host: %v", err)
		}
		if err := get("/var/run/netns/"+h.outside, "http://"+hostUplinkIP+":8080/"); err != nil {
			t.Errorf("through the published port from outside: %v", err)
		}
		if st := h.sandbox(web).State; st != "running" {
			t.Errorf("sandbox %s is %s, want running", web, st)
		}
	})
}

type cmdError struct {
	url string
	err error
	out string
}

func (e *cmdError) Error() string { return "GET " + e.url + ": " + e.err.Error() + ": " + e.out }

// With a non-default PREFIX, the installed unit points at the binary and
// the documentation where make install put them, not at /usr/local.
func TestMakeInstallPrefixReachesTheUnit(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: builds the binaries")
	}
	dest := t.TempDir()
	run(t, "make", "-C", repoRoot, "install", "DESTDIR="+dest, "PREFIX=/opt/fabric")
	unit, err := os.ReadFile(filepath.Join(dest, "etc/systemd/system/fabricd.service"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(unit), "/usr/local") {
		t.Errorf("installed unit still names /usr/local:\n%s", unit)
	}
	for _, want := range []string{"ExecStart=/opt/fabric/bin/fabricd", "Documentation=file:///opt/fabric/share/doc/fabric/README.md"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("installed unit lacks %q", want)
		}
	}
	run(t, "make", "-C", repoRoot, "uninstall", "DESTDIR="+dest, "PREFIX=/opt/fabric")
}
