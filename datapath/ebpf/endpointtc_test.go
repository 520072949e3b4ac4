package ebpf

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	fabricns "github.com/fabricnet/fabric/datapath/netns"
)

// tcxPrograms lists the programs attached through TCX to ifindex's
// ingress in the namespace at nsPath.
func tcxPrograms(t *testing.T, nsPath string, ifindex int) []link.AttachedProgram {
	t.Helper()
	var res *link.QueryResult
	err := fabricns.Do(nsPath, func() error {
		var err error
		res, err = link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
		return err
	})
	if errors.Is(err, link.ErrNotSupported) || errors.Is(err, unix.EINVAL) {
		// No TCX in this kernel (Linux < 6.6; 6.1 answers the query with
		// EINVAL): no program can run through it.
		return nil
	}
	if err != nil {
		t.Fatalf("query TCX programs of ifindex %d: %v", ifindex, err)
	}
	return res.Programs
}

// expectFilterOnly checks that the endpoint veth of pin (ifindex) runs
// its program through fabric's filter on the shared tc block and
// through no TCX link.
func (l *upgradeLab) expectFilterOnly(t *testing.T, pin string, ifindex int) {
	t.Helper()
	if progs := tcxPrograms(t, l.a.path, ifindex); len(progs) != 0 {
		t.Errorf("ifindex %d runs %d TCX programs, want none", ifindex, len(progs))
	}
	if l.filterProgram(t, pin) == 0 {
		t.Errorf("%s: the endpoint veth (ifindex %d) does not run the block's filter", pin, ifindex)
	}
}

// TestEndpointProgramIsAClsactFilter: on a kernel with TCX too, an
// endpoint veth runs its program as fabric's clsact filter and not through
// a TCX link, whose attach waits for an RCU grace period (7 to 11 ms on
// the dev VM, most of an endpoint's set-up).
func TestEndpointProgramIsAClsactFilter(t *testing.T) {
	l := newUpgradeLab(t)
	for _, pin := range l.linkPins() {
		var f Forwarder
		ifindex, _, _ := f.clsactTarget(filepath.Base(pin))
		l.expectFilterOnly(t, pin, ifindex)
	}
	if err := l.a.ping(l.b.ep.Addr.Addr(), 1); err != nil {
		t.Fatal(err)
	}
}

// TestEndpointTCXLinkOfAnOlderAgentIsReplaced: an endpoint whose program an
// older agent attached through a pinned TCX link runs it as a clsact
// filter after a restart, once: the TCX link is let go.
func TestEndpointTCXLinkOfAnOlderAgentIsReplaced(t *testing.T) {
	l := newUpgradeLab(t)
	pin := l.linkPins()[0]
	var f Forwarder
	ifindex, _, _ := f.clsactTarget(filepath.Base(pin))
	// What an older agent left: a TCX link pinned where the program is.
	if err := l.a.dp.fwd.tc.delClsact(ifindex); err != nil {
		t.Fatal(err)
	}
	err := fabricns.Do(l.a.path, func() error {
		lk, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: l.a.dp.fwd.objs.FromEndpoint(), Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		defer lk.Close()
		return lk.Pin(pin)
	})
	if errors.Is(err, ebpf.ErrNotSupported) {
		t.Skip("no TCX in this kernel (Linux < 6.6)")
	}
	if err != nil {
		t.Fatal(err)
	}
	if n := len(tcxPrograms(t, l.a.path, ifindex)); n != 1 {
		t.Fatalf("set-up: %d TCX programs on ifindex %d", n, ifindex)
	}
	l.upgrade(nil)
	l.expectFilterOnly(t, pin, ifindex)
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the older agent's TCX link pin %s is left: %v", pin, err)
	}
	if err := l.a.ping(l.b.ep.Addr.Addr(), 1); err != nil {
		t.Fatal(err)
	}
}
