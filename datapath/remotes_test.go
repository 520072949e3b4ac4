package datapath

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestFilterRemotes(t *testing.T) {
	ip := netip.MustParseAddr
	n := Network{ID: "ov", Driver: DriverOverlay, Subnet: netip.MustParsePrefix("10.5.0.0/24"), Gateway: ip("10.5.0.1"), VNI: 5}
	self := ip("192.0.2.1")
	good := Remote{Addr: ip("10.5.0.7"), MAC: net.HardwareAddr{2, 0, 0, 0, 0, 7}, Node: ip("192.0.2.2")}
	with := func(f func(r *Remote)) Remote {
		r := good
		r.MAC = append(net.HardwareAddr(nil), good.MAC...)
		r.Addr = ip("10.5.0.8")
		r.MAC[5] = 8
		f(&r)
		return r
	}
	for _, c := range []struct {
		name string
		bad  Remote
		why  string
	}{
		{"gateway", with(func(r *Remote) { r.Addr = n.Gateway }), SkipAddress},
		{"outside the subnet", with(func(r *Remote) { r.Addr = ip("10.6.0.8") }), SkipAddress},
		{"network address", with(func(r *Remote) { r.Addr = ip("10.5.0.0") }), SkipAddress},
		{"broadcast", with(func(r *Remote) { r.Addr = ip("10.5.0.255") }), SkipAddress},
		{"multicast MAC", with(func(r *Remote) { r.MAC[0] = 1 }), SkipMAC},
		{"broadcast MAC", with(func(r *Remote) { r.MAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff} }), SkipMAC},
		{"zero MAC", with(func(r *Remote) { r.MAC = make(net.HardwareAddr, 6) }), SkipMAC},
		{"loopback node", with(func(r *Remote) { r.Node = ip("127.0.0.1") }), SkipNode},
		{"this host as node", with(func(r *Remote) { r.Node = self }), SkipNode},
		{"no node", with(func(r *Remote) { r.Node = netip.Addr{} }), SkipNode},
		{"duplicate address", with(func(r *Remote) { r.Addr = good.Addr; r.Node = ip("192.0.2.3") }), SkipDuplicate},
		{"MAC on another node", with(func(r *Remote) { r.MAC = good.MAC; r.Node = ip("192.0.2.3") }), SkipSharedMAC},
	} {
		keep, skipped := FilterRemotes(n, self, []Remote{good, c.bad, good})
		if len(keep) != 1 || keep[0].Addr != good.Addr || keep[0].Node != good.Node {
			t.Errorf("%s: kept %v, want only the good one (exact repeats merged)", c.name, keep)
		}
		if len(skipped) != 1 || skipped[0].Reason != c.why {
			t.Errorf("%s: skipped %v, want one %q", c.name, skipped, c.why)
		}
	}
}

func TestSkipLogOncePerEntry(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	var l SkipLog
	s := []SkippedRemote{{Remote: Remote{Addr: netip.MustParseAddr("10.5.0.8")}, Reason: SkipMAC}}
	for range 5 {
		l.Note(log, "ov", s)
	}
	if got := strings.Count(buf.String(), "skipping"); got != 1 {
		t.Errorf("logged %d times, want once:\n%s", got, buf.String())
	}
	if got := l.Counts()[SkipMAC]; got != 1 {
		t.Errorf("counted %d, want 1", got)
	}
	l.Note(log, "ov", nil) // fixed
	l.Note(log, "ov", s)   // broken again: a new occurrence
	if got := l.Counts()[SkipMAC]; got != 2 {
		t.Errorf("counted %d after it came back, want 2", got)
	}
}
