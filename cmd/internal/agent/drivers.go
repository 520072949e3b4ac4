package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath"
)

func knownDriver(d string) bool {
	return d == api.DriverBridge || d == api.DriverMacvlan || d == api.DriverIPvlan || d == api.DriverOverlay
}

// lanDriver reports whether a driver puts endpoints straight onto the
// parent's LAN (no bridge, no NAT).
func lanDriver(d string) bool { return d == api.DriverMacvlan || d == api.DriverIPvlan }

// driverOptions lists the -o keys each driver accepts. Docker's long names
// are synonyms.
var driverOptions = map[string][]string{
	api.DriverBridge:  {"mtu", "bridge_name", "exclude"},
	api.DriverMacvlan: {"parent", "macvlan_mode", "host_shim", "exclude", "mtu"},
	api.DriverIPvlan:  {"parent", "ipvlan_mode", "host_shim", "exclude", "mtu"},
}

var optionSynonyms = map[string]string{
	"com.docker.network.driver.mtu":  "mtu",
	"com.docker.network.bridge.name": "bridge_name",
	"aux-address":                    "exclude",
}

var driverModes = map[string][]string{
	"macvlan_mode": {"bridge", "private", "vepa", "passthru"},
	"ipvlan_mode":  {"l2", "l3", "l3s"},
}

// applyOptions parses the driver options of a network request into n.
func applyOptions(n *networkRec, opts map[string]string) error {
	allowed := driverOptions[n.Driver]
	keys := make([]string, 0, len(opts))
	for k := range opts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := opts[k]
		key := k
		if syn, ok := optionSynonyms[k]; ok {
			key = syn
		}
		known := false
		for _, a := range allowed {
			known = known || a == key
		}
		if !known {
			return invalidf("unknown option %q for driver %s; known options: %s", k, n.Driver, strings.Join(allowed, ", "))
		}
		if err := applyOption(n, k, key, v); err != nil {
			return err
		}
		if n.Options == nil {
			n.Options = map[string]string{}
		}
		n.Options[k] = v
	}
	if lanDriver(n.Driver) {
		if n.Parent == "" {
			return invalidf("the %s driver needs option parent=IFACE (or IFACE.VLAN, e.g. eth1.10, for an 802.1q sub-interface)", n.Driver)
		}
		if n.Shim && (n.Mode == "private" || n.Mode == "passthru") {
			return invalidf("host_shim=true does not work with macvlan_mode=%s (the shim is a sibling of the sandboxes, which this mode keeps apart or allows only one of)", n.Mode)
		}
		if _, ok := opts["mtu"]; !ok {
			if _, ok := opts["com.docker.network.driver.mtu"]; !ok {
				n.MTU = 0 // follow the parent's MTU
			}
		}
	}
	return nil
}

// applyOption parses one driver option (k as given, key its canonical
// name) into n.
func applyOption(n *networkRec, k, key, v string) error {
	switch key {
	case "mtu":
		mtu, err := strconv.Atoi(v)
		if err != nil || mtu < 576 || mtu > 65535 {
			return invalidf("option %s=%q: MTU must be a number from 576 to 65535", k, v)
		}
		n.MTU = mtu
	case "bridge_name":
		if err := validIfName(v); err != nil {
			return invalidf("option %s: %v", k, err)
		}
		n.Bridge = v
	case "parent":
		if err := validIfName(v); err != nil {
			return invalidf("option parent: %v", err)
		}
		n.Parent = v
	case "macvlan_mode", "ipvlan_mode":
		ok := false
		for _, m := range driverModes[key] {
			ok = ok || m == v
		}
		if !ok {
			return invalidf("option %s=%q: must be one of %s", k, v, strings.Join(driverModes[key], ", "))
		}
		n.Mode = v
	case "host_shim":
		b, err := strconv.ParseBool(v)
		if err != nil {
			return invalidf("option host_shim=%q: must be true or false", v)
		}
		n.Shim = b
	case "exclude":
		for _, s := range strings.Split(v, ",") {
			s = strings.TrimSpace(s)
			if i := strings.IndexByte(s, '='); i >= 0 { // Docker's aux-address host=IP
				s = s[i+1:]
			}
			ip, err := netip.ParseAddr(s)
			if err != nil || !ip.Is4() {
				return invalidf("option %s: %q is not an IPv4 address (want exclude=IP,IP,...)", k, s)
			}
			n.Exclude = append(n.Exclude, ip)
		}
	}
	return nil
}

// splitVLAN splits "eth1.10" into ("eth1", 10). ok is false for a name
// without a numeric suffix.
func splitVLAN(parent string) (base string, vid int, ok bool, err error) {
	i := strings.LastIndexByte(parent, '.')
	if i <= 0 || i == len(parent)-1 {
		return parent, 0, false, nil
	}
	vid, convErr := strconv.Atoi(parent[i+1:])
	if convErr != nil {
		return parent, 0, false, nil
	}
	if vid < 1 || vid > 4094 {
		return "", 0, true, fmt.Errorf("VLAN id %d in parent %s must be 1 to 4094", vid, parent)
	}
	return parent[:i], vid, true, nil
}

// checkParent validates a macvlan/ipvlan parent: it (or, for a VLAN
// sub-interface fabric will create, its base) exists and is up, and no other
// network already has it.
func (a *Agent) checkParent(n *networkRec) error {
	base, _, isVLAN, err := splitVLAN(n.Parent)
	if err != nil {
		return invalidf("%v", err)
	}
	for _, o := range a.networks {
		if lanDriver(o.Driver) && o.Parent == n.Parent {
			hint := fmt.Sprintf("use a VLAN sub-interface such as parent=%s.<1-4094> for another network", n.Parent)
			if isVLAN {
				hint = fmt.Sprintf("use another VLAN on %s", base)
			}
			return conflictf("parent %s is already used by %s network %q; %s", n.Parent, o.Driver, o.Name, hint)
		}
	}
	if l, err := a.host.Link(n.Parent); err == nil {
		if !l.Up {
			return invalidf("parent interface %s is down; bring it up first (ip link set %s up)", n.Parent, n.Parent)
		}
		return nil
	} else if !isVLAN {
		return invalidf("parent interface %s does not exist on this host", n.Parent)
	}
	l, err := a.host.Link(base)
	if err != nil {
		return invalidf("parent %s: base interface %s does not exist on this host", n.Parent, base)
	}
	if !l.Up {
		return invalidf("parent %s: base interface %s is down; bring it up first", n.Parent, base)
	}
	return nil
}

// watchParents re-checks macvlan/ipvlan networks every interval: a
// network whose parent went away is reported unhealthy (its endpoints with
// it), and is fully restored, endpoints included, when the parent returns.
func (a *Agent) watchParents(ctx context.Context, interval time.Duration) {
	datapath.Every(ctx, interval, func() {
		a.checkLANNetworks(ctx)
		a.checkExternalOwners(ctx)
	})
}

func (a *Agent) checkLANNetworks(ctx context.Context) {
	a.mu.Lock()
	defer a.mu.Unlock()
	defer a.syncNamesRoutes() // a parent that came back lost its route
	for _, n := range a.networks {
		if !lanDriver(n.Driver) || n.Phase != phaseReady {
			continue
		}
		err := a.dp.EnsureNetwork(ctx, n.datapath())
		_, wasDown := a.health.unhealthyWhy(n.ID)
		switch {
		case err != nil:
			if !wasDown {
				a.log.Warn("network unhealthy", "network", n.Name, "parent", n.Parent, "err", err)
			}
			a.health.setUnhealthy(n.ID, err.Error())
		case wasDown:
			var failed error
			for _, ep := range a.endpoints {
				if ep.NetworkID == n.ID && ep.Phase == phaseReady {
					failed = errors.Join(failed, a.ensureEndpoint(ctx, ep))
				}
			}
			if failed != nil {
				a.health.setUnhealthy(n.ID, failed.Error())
				continue
			}
			a.health.clearUnhealthy(n.ID)
			a.log.Info("network restored", "network", n.Name, "parent", n.Parent)
		}
	}
}

// markUnhealthyAfterSync records which LAN networks a Sync could not
// program because their parent is missing.
func (a *Agent) markUnhealthyAfterSync(ctx context.Context, syncErr error) {
	if !errors.Is(syncErr, datapath.ErrParentMissing) {
		return
	}
	for _, n := range a.networks {
		if lanDriver(n.Driver) {
			if err := a.dp.EnsureNetwork(ctx, n.datapath()); err != nil {
				a.health.setUnhealthy(n.ID, err.Error())
			}
		}
	}
}

// healthWarnings describes unhealthy networks for status (with mu or view
// held).
func (a *Agent) healthWarnings() []string {
	var out []string
	for id, why := range a.health.unhealthyNetworks() {
		n := a.networks[id]
		if n == nil {
			continue
		}
		count := 0
		for _, ep := range a.endpoints {
			if ep.NetworkID == id {
				count++
			}
		}
		out = append(out, fmt.Sprintf("network %s unhealthy (%d endpoint(s) down): %s", n.Name, count, why))
	}
	sort.Strings(out)
	return out
}
