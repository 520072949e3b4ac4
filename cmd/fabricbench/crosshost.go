package main

import (
	"context"
	"fmt"
	"time"
)

// Cross-host addresses (inside the lab's namespaces only).
const (
	c1xIP   = "10.77.1.4" // baseline VXLAN client on h1's bridge
	c2IP    = "10.77.2.2" // baseline VXLAN server behind h2's bridge
	macA    = "10.78.0.11"
	macB    = "10.78.0.12"
	ipvA    = "10.79.0.11"
	ipvB    = "10.79.0.12"
	vlanIPv = "100" // ipvlan rides a VLAN: a parent serves one network only
)

// crossHost holds what the cross-host section set up.
type crossHost struct {
	maNS, iaNS string // client sandboxes on h1
	ipvlanSkip string // why the ipvlan row cannot run ("" when it can)
}

// setupCrossHost adds the baseline kernel VXLAN overlay of baseline-lab.sh
// (c1x on h1's br0 ↔ c2 on h2's br0 over vx0), a second fabricd on h2, and
// macvlan and ipvlan networks on the underlay (u1/u2 and u1.100/u2.100)
// with a client sandbox on h1 and a server sandbox on h2 for each.
func (l *Lab) setupCrossHost(ctx context.Context) (*crossHost, error) {
	if err := l.setupBaselineVXLAN(ctx); err != nil {
		return nil, err
	}
	if l.fabricErr != nil {
		return &crossHost{}, nil
	}

	_, _, socket2, _, err := l.startAgent(ctx, "h2")
	if err != nil {
		return nil, fmt.Errorf("second fabricd on h2: %w", err)
	}
	x := &crossHost{}
	x.maNS, err = l.lanRows(ctx, socket2, func(dev string) []string {
		return []string{"-d", "macvlan", "--subnet", "10.78.0.0/24", "-o", "parent=" + dev}
	}, "ma", "mb", macA, macB, "bench-mac")
	if err != nil {
		return nil, err
	}
	// ipvlan rides a VLAN (a parent serves one network); kernels built
	// without 802.1q or ipvlan cannot have this row.
	x.iaNS, err = l.lanRows(ctx, socket2, func(dev string) []string {
		return []string{"-d", "ipvlan", "--subnet", "10.79.0.0/24", "-o", "parent=" + dev + "." + vlanIPv}
	}, "ia", "ib", ipvA, ipvB, "bench-ipv")
	if err != nil {
		x.ipvlanSkip = "unavailable: " + lastLines(err.Error(), 1)
	}
	return x, nil
}

// setupBaselineVXLAN makes baseline-lab.sh's kernel VXLAN overlay: c1x on
// h1's br0 and c2 on h2's br0 over vx0, with the servers in c2.
func (l *Lab) setupBaselineVXLAN(ctx context.Context) error {
	for _, n := range []string{"c1x", "c2"} {
		if err := l.addNS(n); err != nil {
			return err
		}
	}
	h1, h2 := l.ns("h1"), l.ns("h2")
	steps := [][]string{
		{"-n", h2, "link", "add", "br0", "type", "bridge"},
		{"-n", h2, "link", "set", "br0", "up"},
	}
	for _, h := range []struct{ ns, dev, local, remote string }{{h1, "u1", h1IP, h2IP}, {h2, "u2", h2IP, h1IP}} {
		steps = append(steps,
			[]string{"-n", h.ns, "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789", "local", h.local, "remote", h.remote, "dev", h.dev},
			[]string{"-n", h.ns, "link", "set", "vx0", "master", "br0"},
			[]string{"-n", h.ns, "link", "set", "vx0", "up"})
	}
	for _, c := range []struct{ name, host, ip string }{{"c1x", h1, c1xIP}, {"c2", h2, c2IP}} {
		cn := l.ns(c.name)
		steps = append(steps,
			[]string{"link", "add", "e0", "netns", cn, "type", "veth", "peer", "name", "v" + c.name, "netns", c.host},
			[]string{"-n", c.host, "link", "set", "v" + c.name, "master", "br0"},
			[]string{"-n", c.host, "link", "set", "v" + c.name, "up"},
			[]string{"-n", cn, "addr", "add", c.ip + "/16", "dev", "e0"},
			// the overlay pair leaves room for the 50-byte VXLAN header
			[]string{"-n", cn, "link", "set", "e0", "mtu", "1450", "up"})
	}
	for _, s := range steps {
		if _, err := runCmd(ctx, 10*time.Second, "ip", s...); err != nil {
			return err
		}
	}
	if _, err := l.startIn(ctx, "c2-servers", l.nsPath("c2"), l.self, serveArg); err != nil {
		return err
	}
	if err := waitListen(ctx, l.nsPath("c2"), 10*time.Second, portPerf, portLat); err != nil {
		return fmt.Errorf("servers in c2: %w", err)
	}
	return nil
}

// lanRows creates one network per host (h1's agent, and h2's at socket2)
// and a client (h1) and server (h2) sandbox on it; it returns the
// client's namespace.
func (l *Lab) lanRows(ctx context.Context, socket2 string, netArgs func(dev string) []string, client, server, ipA, ipB, netName string) (string, error) {
	serve := []string{l.self, serveArg}
	for _, h := range []struct{ socket, dev string }{{l.socket, "u1"}, {socket2, "u2"}} {
		args := append([]string{"--socket", h.socket, "network", "create"}, netArgs(h.dev)...)
		if _, err := runCmd(ctx, 30*time.Second, l.fabricctl(), append(args, netName)...); err != nil {
			return "", err
		}
	}
	a, err := l.fabricRunOn(ctx, l.socket, []string{"--name", l.ns(client), "--network", netName, "--ip", ipA}, serve)
	if err != nil {
		return "", err
	}
	b, err := l.fabricRunOn(ctx, socket2, []string{"--name", l.ns(server), "--network", netName, "--ip", ipB}, serve)
	if err != nil {
		return "", err
	}
	if err := waitListen(ctx, b.NetNS, 10*time.Second, portPerf, portLat); err != nil {
		return "", fmt.Errorf("servers in sandbox %s: %w", b.Name, err)
	}
	return a.NetNS, nil
}

// sectionCrossHost: bulk TCP and ping-pong between hosts: the raw underlay
// (the limit), the kernel VXLAN overlay (the reference overlay path), and
// fabric's macvlan and ipvlan networks on the underlay.
func (l *Lab) sectionCrossHost(ctx context.Context) error {
	x, err := l.setupCrossHost(ctx)
	if err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	skip := l.fabricSkip()
	specs := []spec{
		{name: "raw underlay h1 → h2 (limit)", fn: l.throughputLatency(l.nsPath("h1"), h2IP)},
		{name: "kernel VXLAN c1x → c2 (overlay ref)", fn: l.throughputLatency(l.nsPath("c1x"), c2IP)},
		{name: "fabric macvlan h1 → h2", skip: skip},
		{name: "fabric ipvlan l2 (VLAN " + vlanIPv + ") h1 → h2", skip: skip},
	}
	if skip == "" {
		specs[2].fn = l.throughputLatency(x.maNS, macB)
		specs[3].fn = l.throughputLatency(x.iaNS, ipvB)
		specs[3].skip = x.ipvlanSkip
	}
	return l.runStreamPing(ctx, "cross-host", specs,
		func(res []*result) []column { return l.streamPingColumns("raw", res[0], "VXLAN", res[1]) },
		"the kernel VXLAN row is baseline-lab.sh's overlay; fabric's own overlay (eBPF and the kernel VXLAN fallback) is measured in the overlay section.",
		"DESIGN.md (another run, for context only): raw 11.7–13.7 Gbit/s, 10–16 µs; kernel VXLAN 10.1–11.2 Gbit/s, 12–20 µs.")
}
