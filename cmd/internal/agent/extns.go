package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns"
)

// A namespace fabric did not create (`network connect NET /proc/PID/ns/net`)
// is attached by identity, not by path: a path such as /proc/PID/ns/net
// names another namespace as soon as the PID is reused. On connect the
// agent checks the path really is a network namespace other than its own
// and the host's, and bind-mounts it under its state dir (the reference it
// holds and works through). Every use checks the identity again (the
// datapath on the descriptor it opens); when the original path no longer
// names that namespace, its owner let go of it, and the agent removes its
// endpoints and lets go too. What the namespace had before is left as it
// was: its own default route stays (fabric adds only the subnet route),
// its interface names are skipped, and a disconnect removes only what
// fabric added.

// nsGetNSType is the NS_GET_NSTYPE ioctl (linux/nsfs.h): the kind of
// namespace an nsfs descriptor refers to.
const nsGetNSType = 0xb703

// openExternal opens the namespace at path for a connect or a lookup by
// path and returns it with its identity. It refuses with a clear reason
// anything that is not a network namespace, one the agent may not open,
// and the agent's own or the host's namespace.
func (a *Agent) openExternal(path string) (*os.File, netns.ID, error) {
	f, err := openNSFile(path)
	if err != nil {
		switch {
		case errors.Is(err, os.ErrPermission):
			return nil, netns.ID{}, invalidf("%s: permission denied (the agent cannot open this namespace; it must run as root)", path)
		case errors.Is(err, os.ErrNotExist):
			return nil, netns.ID{}, notFoundf("%s does not exist (want a path such as /proc/PID/ns/net or /var/run/netns/NAME)", path)
		}
		return nil, netns.ID{}, invalidf("open %s: %v", path, err)
	}
	typ, err := unix.IoctlRetInt(int(f.Fd()), nsGetNSType)
	if err != nil || typ != unix.CLONE_NEWNET {
		f.Close()
		return nil, netns.ID{}, invalidf("%s is not a network namespace (want a path such as /proc/PID/ns/net or /var/run/netns/NAME)", path)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, netns.ID{}, fmt.Errorf("stat %s: %w", path, err)
	}
	id := netns.ID{Dev: st.Dev, Ino: st.Ino}
	for _, own := range []struct{ path, what string }{
		{"/proc/self/ns/net", "the agent's own network namespace"},
		{a.opts.HostNetNS, "the host namespace the agent programs"},
		{"/proc/1/ns/net", "the host's network namespace (that of PID 1)"},
	} {
		if own.path == "" {
			continue
		}
		if oid, err := netns.IDOf(own.path); err == nil && oid == id {
			f.Close()
			return nil, netns.ID{}, invalidf("%s is %s: fabric only connects namespaces of containers, never the host's", path, own.what)
		}
	}
	return f, id, nil
}

// openNSFile opens a namespace file (a seam: tests make it fail).
var openNSFile = os.Open

// heldDir is where the agent keeps its references to external namespaces.
func (a *Agent) heldDir() string { return filepath.Join(a.opts.StateDir, "netns") }

// holdExternal bind-mounts the namespace open as f under the state dir as
// the sandbox's reference, and notes what must be left alone in it.
func (a *Agent) holdExternal(sb *sandboxRec, f *os.File) error {
	if err := os.MkdirAll(a.heldDir(), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", a.heldDir(), err)
	}
	target := filepath.Join(a.heldDir(), sb.Name)
	if id, err := netns.IDOf(target); err == nil && id == sb.NSID && netns.IsNamespace(target) {
		sb.NetNS = target
		return nil
	}
	_ = unix.Unmount(target, unix.MNT_DETACH)
	tf, err := os.OpenFile(target, os.O_RDONLY|os.O_CREATE, 0o400)
	if err != nil {
		return fmt.Errorf("create %s: %w", target, err)
	}
	tf.Close()
	src := fmt.Sprintf("/proc/self/fd/%d", f.Fd())
	if err := unix.Mount(src, target, "none", unix.MS_BIND, ""); err != nil {
		os.Remove(target)
		return fmt.Errorf("hold namespace %s at %s: %w", sb.Origin, target, err)
	}
	if id, err := netns.IDOf(target); err != nil || id != sb.NSID {
		releaseHeld(target)
		if err != nil {
			return fmt.Errorf("hold namespace %s: check the bind mount: %w", sb.Origin, err)
		}
		return fmt.Errorf("hold namespace %s: the bind mount is not the namespace checked", sb.Origin)
	}
	sb.NetNS = target
	return nil
}

// releaseExternal drops the agent's reference to an external sandbox's
// namespace (the namespace itself lives on while its owner holds it).
func (a *Agent) releaseExternal(sb *sandboxRec) {
	if sb.Mode == api.ModeExternal && filepath.Dir(sb.NetNS) == a.heldDir() {
		releaseHeld(sb.NetNS)
	}
}

func releaseHeld(path string) {
	_ = unix.Unmount(path, unix.MNT_DETACH)
	_ = os.Remove(path)
}

// externalState says whether the agent still holds an external sandbox's
// namespace and whether its original path still names it.
func externalState(sb *sandboxRec) (held, owned bool) {
	id, err := netns.IDOf(sb.NetNS)
	held = err == nil && id == sb.NSID && netns.IsNamespace(sb.NetNS)
	origin := sb.Origin
	if origin == "" {
		origin = sb.NetNS // a record from before references were held
	}
	id, err = netns.IDOf(origin)
	owned = err == nil && id == sb.NSID
	return held, owned
}

// reviveExternal makes an external sandbox usable after a start: the
// reference is taken again if it was lost (a reboot, a new mount
// namespace) while the original path still names the namespace; when it
// does not, the owner let go and so does fabric (endpoints removed).
func (a *Agent) reviveExternal(ctx context.Context, sb *sandboxRec) error {
	held, owned := externalState(sb)
	if !owned {
		a.log.Info("external namespace is gone or its path names another one now; dropping its endpoints",
			"sandbox", sb.Name, "path", sb.Origin)
		return a.removeSandboxLocked(ctx, sb)
	}
	if held && sb.Origin != "" {
		return nil
	}
	if sb.Origin == "" {
		sb.Origin = sb.NetNS
	}
	f, id, err := a.openExternal(sb.Origin)
	if err == nil && id != sb.NSID {
		f.Close()
		err = errors.New("it names another namespace now")
	}
	if err == nil {
		err = a.holdExternal(sb, f)
		f.Close()
	}
	if err != nil {
		a.log.Warn("cannot take external namespace again; dropping its endpoints", "sandbox", sb.Name, "path", sb.Origin, "err", err)
		return a.removeSandboxLocked(ctx, sb)
	}
	return a.store.Update(func(tx storeTx) error { return tx.Put(bucketSandboxes, sb.Name, sb) })
}

// checkExternalOwners drops external sandboxes whose owner let go of the
// namespace (the process died; `ip netns del`), so that their addresses go
// back to the pool and nothing is ever programmed through a path that now
// names someone else's namespace.
func (a *Agent) checkExternalOwners(ctx context.Context) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, sb := range a.sandboxes {
		if sb.Mode != api.ModeExternal || sb.Phase != phaseReady {
			continue
		}
		if _, owned := externalState(sb); owned {
			continue
		}
		a.log.Info("external namespace let go by its owner; removing its endpoints", "sandbox", sb.Name, "path", sb.Origin)
		if err := a.removeSandboxLocked(ctx, sb); err != nil {
			a.log.Warn("remove endpoints of a gone namespace", "sandbox", sb.Name, "err", err)
		}
	}
}

// nsFacts is what a namespace fabric did not create already has.
type nsFacts struct {
	links        []string
	defaultRoute string // "via GW dev IF", or "" if it has none
}

// inspectNS reads the interface names and IPv4 default route of the
// namespace at path.
func inspectNS(path string) (nsFacts, error) {
	h, err := netns.HandleAt(path)
	if err != nil {
		return nsFacts{}, err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nsFacts{}, fmt.Errorf("list links in %s: %w", path, err)
	}
	var out nsFacts
	names := map[int]string{}
	for _, l := range links {
		out.links = append(out.links, l.Attrs().Name)
		names[l.Attrs().Index] = l.Attrs().Name
	}
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nsFacts{}, fmt.Errorf("list routes in %s: %w", path, err)
	}
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		var via []string
		if r.Gw != nil {
			via = append(via, "via "+net.IP(r.Gw).String())
		}
		if n := names[r.LinkIndex]; n != "" {
			via = append(via, "dev "+n)
		}
		out.defaultRoute = strings.Join(append([]string{"default"}, via...), " ")
		break
	}
	return out, nil
}

// freeIfName is the lowest ethN that neither an endpoint of the sandbox
// nor an interface already in its namespace uses.
func (a *Agent) freeIfName(sb *sandboxRec, taken []string) string {
	used := map[string]bool{}
	for _, n := range taken {
		used[n] = true
	}
	for _, ep := range a.bySandbox[sb.Name] {
		used[ep.IfName] = true
	}
	for i := 0; ; i++ {
		if name := fmt.Sprintf("eth%d", i); !used[name] {
			return name
		}
	}
}
