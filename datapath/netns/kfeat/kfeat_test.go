package kfeat

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// TestProbesAgreeWithIP: for the link kinds, the probe's answer is what
// ip(8) gets when it tries the same thing in a namespace of its own, and
// the probes leave no link behind in the test's namespace.
func TestProbesAgreeWithIP(t *testing.T) {
	netnstest.RequireRoot(t)
	before, _ := exec.Command("ip", "-o", "link").Output()
	for _, c := range []struct {
		f    Feature
		args []string
	}{
		{VLAN, []string{"type", "vlan", "id", "10"}},
		{IPvlan, []string{"type", "ipvlan", "mode", "l2"}},
		{Macvlan, []string{"type", "macvlan", "mode", "bridge"}},
	} {
		ns, _ := netnstest.New(t, "kf")
		if out, err := exec.Command("ip", "-n", ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1").CombinedOutput(); err != nil {
			t.Fatalf("veth: %v: %s", err, out)
		}
		args := append([]string{"-n", ns, "link", "add", "link", "d0", "name", "c0"}, c.args...)
		_, ipErr := exec.Command("ip", args...).CombinedOutput()
		got := Have(c.f)
		if (got == nil) != (ipErr == nil) {
			t.Errorf("%s: Have = %v, but ip link add: %v", c.f, got, ipErr)
		}
		t.Logf("%s: %v", c.f, got)
	}
	for _, f := range []Feature{Netem, TCX, IPvlanL3S} {
		t.Logf("%s: %v", f, Have(f))
	}
	after, _ := exec.Command("ip", "-o", "link").Output()
	if strings.Count(string(after), "\n") != strings.Count(string(before), "\n") {
		t.Errorf("links in the test's namespace changed:\n%s\n->\n%s", before, after)
	}
}

// TestNeedSkipsNamingTheFeature: a missing feature skips the test with
// "needs <feature>".
func TestNeedSkipsNamingTheFeature(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root")
	}
	mu.Lock()
	results["fake"] = os.ErrNotExist
	mu.Unlock()
	t.Cleanup(func() { mu.Lock(); delete(results, "fake"); mu.Unlock() })
	skipped := false
	t.Run("inner", func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		Need(t, "fake")
	})
	if !skipped {
		t.Error("Need did not skip for a missing feature")
	}
	if err := Have("no-such-feature"); err == nil {
		t.Error("an unknown feature is reported present")
	}
}
