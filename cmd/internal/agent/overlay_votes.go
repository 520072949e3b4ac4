package agent

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/fabricnet/fabric/cluster"
	"github.com/fabricnet/fabric/cmd/internal/api"
)

// allocateOverlay takes an address for a new endpoint from this node's
// leased blocks (or claims the static one cluster-wide). It uses the
// address reserveOverlay voted for before the agent lock was taken, when
// there is one for this network and address; otherwise it votes itself,
// with the lock held.
func (a *Agent) allocateOverlay(ctx context.Context, n *networkRec, ip netip.Addr, owner string) (netip.Addr, error) {
	if a.cl == nil {
		return netip.Addr{}, invalidf("network %q is an overlay network but this agent is not in a cluster", n.Name)
	}
	if ip.IsValid() && !n.Subnet.Contains(ip) {
		return netip.Addr{}, naming(invalidf("ip %s is outside network %q (%s)", ip, n.Name, n.Subnet), "ip")
	}
	if res, ok := ctx.Value(reservationKey{}).(*overlayReservation); ok && res.take(n, ip) {
		if res.err != nil {
			return netip.Addr{}, clusterErr(res.err)
		}
		return res.addr, nil
	}
	return a.voteOverlay(ctx, n.Name, ip, owner)
}

// voteOverlay asks the cluster for an address: the static ip, or any.
func (a *Agent) voteOverlay(ctx context.Context, network string, ip netip.Addr, owner string) (netip.Addr, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if ip.IsValid() {
		if err := a.cl.ClaimIP(ctx, network, ip, owner); err != nil {
			return netip.Addr{}, clusterErr(err)
		}
		return ip, nil
	}
	addr, err := a.cl.AllocateIP(ctx, network, owner)
	if err != nil {
		return netip.Addr{}, clusterErr(err)
	}
	return addr, nil
}

// An overlay address is voted on by every member, which takes up to a
// RequestTimeout per round and, with a member that does not answer,
// several rounds (up to 15 s). The agent lock must not be held meanwhile,
// or status, metrics and every other request wait for it. So a request
// that may need one (run, connect) reserves the address first, without the
// lock (reserveOverlay); the locked part then takes the reservation
// (allocateOverlay) and checks everything else as before. A reservation
// the locked part did not take is given back.
type overlayReservation struct {
	networkID string     // the agent's network it is for
	want      netip.Addr // the static address asked for, or invalid
	addr      netip.Addr
	err       error // the vote's error, for the locked part to return
	mu        sync.Mutex
	taken     bool
}

type reservationKey struct{}

// take hands the reservation to the endpoint being planned, once.
func (r *overlayReservation) take(n *networkRec, ip netip.Addr) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.taken || r.networkID != n.ID || r.want != ip {
		return false
	}
	r.taken = true
	return true
}

// reserveOverlay votes for the address of a new endpoint on the overlay
// network netRef (static ip if given) before the caller takes the agent
// lock. It returns ctx carrying the reservation and a function the caller
// must call when done, which gives an untaken address back. For anything
// but a ready overlay network, or a request the locked part will refuse
// anyway, it reserves nothing.
func (a *Agent) reserveOverlay(ctx context.Context, netRef, ip string) (context.Context, func()) {
	noop := func() {}
	if a.cl == nil {
		return ctx, noop
	}
	a.mu.Lock()
	n, err := a.networkLocked(netRef)
	ready := err == nil && n.Driver == api.DriverOverlay && n.Phase == phaseReady
	var name, id string
	var subnet netip.Prefix
	if ready {
		name, id, subnet = n.Name, n.ID, n.Subnet
	}
	a.mu.Unlock()
	if !ready {
		return ctx, noop
	}
	var want netip.Addr
	if ip != "" {
		if want, err = netip.ParseAddr(ip); err != nil || !want.Is4() || !subnet.Contains(want) {
			return ctx, noop // the locked part says what is wrong
		}
	}
	res := &overlayReservation{networkID: id, want: want}
	// A distinct owner: two reservations of one static address must not
	// both pass ClaimIP's "same owner again" shortcut.
	res.addr, res.err = a.voteOverlay(ctx, name, want, "new endpoint (reservation "+newID()[:12]+")")
	release := func() {
		res.mu.Lock()
		giveBack := !res.taken && res.err == nil
		res.taken = true
		res.mu.Unlock()
		if giveBack {
			if err := a.cl.ReleaseIP(name, res.addr); err != nil && !errors.Is(err, cluster.ErrNotFound) {
				a.log.Warn("give back reserved overlay address", "network", name, "ip", res.addr, "err", err)
			}
		}
	}
	return context.WithValue(ctx, reservationKey{}, res), release
}
