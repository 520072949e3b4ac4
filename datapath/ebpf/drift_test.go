//go:build linux

package ebpf

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/datapathtest"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// driftInterval is the repair interval of the drift test (the agent's is
// datapath.RepairInterval).
const driftInterval = time.Second

// TestDriftIsRepaired: while h1's sandbox pings h2's over the overlay, a
// host veth, the uplink's TCX program and a remotes map entry are removed
// by hand on h1; the periodic Sync puts each back without a restart and
// counts the repair.
func TestDriftIsRepaired(t *testing.T) {
	l := newOverlayLab(t)
	h1 := l.h1
	to := l.h2.ep.Addr.Addr()
	if err := h1.ping(to, 2); err != nil {
		t.Fatal(err)
	}
	s := l.state(h1)
	ctx := context.Background()
	for range 2 {
		if err := h1.dp.Sync(ctx, s); err != nil {
			t.Fatalf("Sync: %v", err)
		}
	}
	if m, err := h1.dp.Metrics(); err != nil || len(m.Repairs) != 0 {
		t.Fatalf("passes without drift repaired %v (%v)", m.Repairs, err)
	}

	// Traffic throughout, bounded in time.
	stop := datapathtest.Traffic(t, h1.sbName, to.String())
	datapathtest.RepairEvery(t, h1.dp, s, driftInterval)

	uplinkPin := filepath.Join(h1.opts.BPFRoot, "links", pinUplinkIngress)
	remotesPin := filepath.Join(h1.opts.BPFRoot, "maps", "remotes")
	reaches := func() bool { return h1.ping(to, 1) == nil }
	for _, d := range []datapathtest.Drift{
		{Name: "host veth", Object: datapath.RepairVeth,
			Remove: func() error { return netnstest.Cmd(h1.name, "ip", "link", "del", h1.ep.HostIfName).Run() },
			Back: func() bool {
				return netnstest.Cmd(h1.name, "ip", "link", "show", h1.ep.HostIfName).Run() == nil && reaches()
			}},
		{Name: "uplink tc program", Object: datapath.RepairProgram,
			Remove: func() error { return removeUplinkProgram(h1.name, h1.underlay, uplinkPin) },
			Back:   func() bool { return tcxAttached(uplinkPin) || clsactAttached(h1.name, h1.underlay) }},
		{Name: "remotes map entry", Object: datapath.RepairForward,
			Remove: func() error { return deleteAll(remotesPin) },
			Back:   func() bool { n, err := mapLen(remotesPin); return err == nil && n == 1 && reaches() }},
	} {
		took := datapathtest.CheckRepaired(t, h1.dp, d, 2*driftInterval+10*time.Second)
		t.Logf("%s repaired after %s (interval %s)", d.Name, took.Round(time.Millisecond), driftInterval)
	}
	t.Logf("traffic: %s", stop())
}

// removeUplinkProgram takes the uplink's ingress program off by hand: the
// TCX link pinned at pin is detached, or, where the kernel has no TCX
// (Linux 6.1) and the pin is the program, the clsact filter is deleted.
func removeUplinkProgram(ns, dev, pin string) error {
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		l.Close()
		return detachPinned(pin)
	}
	return netnstest.Cmd(ns, "tc", "filter", "del", "dev", dev, "ingress").Run()
}

// clsactAttached reports whether dev has a bpf filter on its clsact
// ingress hook.
func clsactAttached(ns, dev string) bool {
	out, err := netnstest.Cmd(ns, "tc", "filter", "show", "dev", dev, "ingress").Output()
	return err == nil && bytes.Contains(out, []byte(" bpf "))
}

// detachPinned detaches the link pinned at pin, as `bpftool link detach`
// does: the pin stays, the program no longer runs.
func detachPinned(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		return err
	}
	defer l.Close()
	return l.Detach()
}

// tcxAttached reports whether the link pinned at pin is attached to a
// device.
func tcxAttached(pin string) bool {
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		return false
	}
	defer l.Close()
	info, err := l.Info()
	return err == nil && info.TCX() != nil && info.TCX().Ifindex != 0
}

func deleteAll(pin string) error {
	m, err := ebpf.LoadPinnedMap(pin, nil)
	if err != nil {
		return err
	}
	defer m.Close()
	var keys [][]byte
	var k, v []byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, append([]byte(nil), k...))
	}
	if err := it.Err(); err != nil {
		return err
	}
	if len(keys) == 0 {
		return errors.New("the map is empty already")
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil {
			return fmt.Errorf("delete: %w", err)
		}
	}
	return nil
}

func mapLen(pin string) (int, error) {
	m, err := ebpf.LoadPinnedMap(pin, nil)
	if err != nil {
		return 0, err
	}
	defer m.Close()
	n := 0
	var k, v []byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n, it.Err()
}
