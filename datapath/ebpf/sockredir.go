package ebpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/fabricnet/fabric/bpf"
	"github.com/fabricnet/fabric/datapath"
)

// Socket redirection (bpf.SockRedir): a TCP connection from a host process
// to a local sandbox — a published port reached from 127.0.0.1 or a host
// address, or the endpoint's address itself — has each sendmsg moved into
// the peer socket, past both TCP stacks and the veth. Sandbox to sandbox
// traffic stays on the tc path: there every packet meets the isolation
// checks and the counters, and same-host figures stay comparable.
//
// The sockops program is on the cgroup v2 root through a pinned link; the
// sk_msg program is attached to the socket hash, which is pinned with the
// programs' other maps of their own, so that a restarted agent keeps the
// redirected connections: a socket hash that is freed takes its sockets
// out of redirection and drops what is queued for them.

// pinSockOps is the sockops program's link pin.
const pinSockOps = "sockops"

// loadSockRedir loads the programs; a test replaces it to see the
// datapath run on a kernel without them.
var loadSockRedir = bpf.LoadSockRedir

// attachSockRedir loads the programs onto the pinned maps (or new ones),
// attaches sk_msg to the socket hash and sockops to the cgroup v2 root,
// swapping the new program into a link a previous run pinned.
func (f *Forwarder) attachSockRedir() error {
	root, err := bpf.CgroupV2Root()
	if err != nil {
		return unsupported("socket redirection", err)
	}
	dir := filepath.Join(f.opts.BPFRoot, "maps")
	repl := map[string]*ebpf.Map{}
	defer func() {
		for _, m := range repl {
			m.Close()
		}
	}()
	for _, name := range bpf.SockRedirMaps {
		if m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil); err == nil {
			repl[name] = m
		}
	}
	r, err := loadSockRedir(f.objs, &ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil && len(repl) > 0 {
		f.log.Warn("pinned socket redirection maps do not fit this build; recreating them", "err", err)
		for name, m := range repl {
			m.Close()
			delete(repl, name)
			_ = os.Remove(filepath.Join(dir, name))
		}
		r, err = loadSockRedir(f.objs, nil)
	}
	if err != nil {
		return classifyLoad("socket redirection", err)
	}
	if err := f.pinRedirMaps(r, repl); err != nil {
		return errors.Join(err, r.Close())
	}
	if err := f.setRedirMemMax(r); err != nil {
		return errors.Join(err, r.Close())
	}
	if err := r.AttachMsg(); err != nil {
		return errors.Join(unsupported("socket redirection", err), r.Close())
	}
	err = f.pinLink(f.linkPin(pinSockOps), r.SockOps(), nil, func() (link.Link, error) { return r.AttachCgroup(root) })
	if err != nil {
		return errors.Join(classifyLoad("socket redirection", err), r.Close())
	}
	f.redir, f.redirCgroup = r, root
	return nil
}

// setRedirMemMax lets sockets be redirected while TCP's memory in use is
// below half of tcp_mem's pressure-free limit: redirected bytes have no
// flow control, and what a slow reader leaves queued must never push the
// host's TCP into memory pressure (nor its senders into ENOMEM). Sync
// sets it again, so a changed tcp_mem is followed.
func (f *Forwarder) setRedirMemMax(r *bpf.SockRedir) error {
	mem, err := bpf.TCPMemPages()
	if errors.Is(err, os.ErrNotExist) {
		// tcp_mem is global, but only the initial namespace's /proc/sys
		// shows it: an agent in a namespace of its own (a lab host) uses
		// the kernel's default, 3/64 of memory.
		mem[0], err = defaultTCPMem0()
	}
	if err != nil {
		return err
	}
	f.redirMemMax = mem[0] / 2
	return r.SetMemMax(f.redirMemMax)
}

// defaultTCPMem0 is the first value of tcp_mem as the kernel sets it at
// boot (tcp_init_mem: 3/64 of the pages free then), from MemTotal.
func defaultTCPMem0() (uint64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("estimate tcp_mem: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			f := strings.Fields(rest) // "24683460 kB"
			if len(f) != 2 || f[1] != "kB" {
				break
			}
			if kb, err := strconv.ParseUint(f[0], 10, 64); err == nil {
				return kb * 1024 / uint64(os.Getpagesize()) * 3 / 64, nil
			}
		}
	}
	return 0, fmt.Errorf("estimate tcp_mem: no MemTotal in /proc/meminfo")
}

// pinRedirMaps pins r's own maps that were not re-opened from a pin.
func (f *Forwarder) pinRedirMaps(r *bpf.SockRedir, reopened map[string]*ebpf.Map) error {
	for name, m := range r.OwnMaps() {
		if _, ok := reopened[name]; ok {
			continue
		}
		p := filepath.Join(f.opts.BPFRoot, "maps", name)
		_ = os.Remove(p) // a stale pin of an incompatible map
		if err := m.Pin(p); err != nil {
			return fmt.Errorf("pin map %s: %w", p, err)
		}
	}
	return nil
}

// ensureSockRedir puts the sockops program back on the cgroup if something
// detached it (a Sync's check), and takes out of redirection the sockets
// of endpoints w no longer has.
func (f *Forwarder) ensureSockRedir(w want) error {
	if !f.opts.SockRedirect {
		return f.retireSockRedir()
	}
	if f.redir == nil {
		return nil
	}
	var errs []error
	errs = append(errs, f.setRedirMemMax(f.redir))
	if !f.sockOpsAttached() {
		pin := f.linkPin(pinSockOps)
		err := f.pinLink(pin, f.redir.SockOps(), nil, func() (link.Link, error) { return f.redir.AttachCgroup(f.redirCgroup) })
		if err != nil {
			errs = append(errs, err)
		} else {
			f.repairs.Add(f.log, datapath.RepairProgram, "sockops on cgroup "+f.redirCgroup)
		}
	}
	// Every connection the programs admit has an endpoint at one end.
	errs = append(errs, f.forgetRedirected(func(c bpf.RedirConn) bool {
		return !w.addr[c.Local.Addr()] && !w.addr[c.Remote.Addr()]
	}))
	return errors.Join(errs...)
}

// sockOpsAttached reports whether the pinned link runs our sockops program.
func (f *Forwarder) sockOpsAttached() bool {
	id, ok := f.progID(f.redir.SockOps())
	if !ok {
		return false
	}
	l, err := link.LoadPinnedLink(f.linkPin(pinSockOps), nil)
	if err != nil {
		return false
	}
	defer l.Close()
	info, err := l.Info()
	return err == nil && info.Program == id
}

// forgetRedirected takes the connections drop reports out of the socket
// hash: those of endpoints that were removed, which must not go on talking
// past their missing veth.
func (f *Forwarder) forgetRedirected(drop func(bpf.RedirConn) bool) error {
	if f.redir == nil {
		return nil
	}
	n, err := f.redir.Forget(drop)
	if n > 0 {
		f.log.Info("sockets of removed endpoints taken out of socket redirection", "sockets", n)
	}
	return err
}

// retireSockRedir undoes what a run with socket redirection left, for a
// run without it: the sockops program is detached at once (no new
// connection is admitted); the maps' pins go once the socket hash is
// empty, so that connections redirected before go on until they close
// (a socket hash that is freed drops what is queued for its sockets).
// Sync calls it again until the pins are gone.
func (f *Forwarder) retireSockRedir() error {
	pin := f.linkPin(pinSockOps)
	if _, err := os.Stat(pin); err == nil {
		f.log.Info("socket redirection is off: detaching its sockops program")
		if err := detach(pin); err != nil {
			return err
		}
	}
	dir := filepath.Join(f.opts.BPFRoot, "maps")
	socks, err := ebpf.LoadPinnedMap(filepath.Join(dir, "redir_socks"), nil)
	if err == nil {
		var k [12]byte
		busy := socks.NextKey(nil, &k) == nil
		socks.Close()
		if busy {
			return nil // a later Sync retries
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		f.log.Warn("cannot open pinned redir_socks; removing it", "err", err)
	}
	var errs []error
	for _, name := range bpf.SockRedirMaps {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpin %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// redirDetail is socket redirection's status line.
func (f *Forwarder) redirDetail() string {
	if !f.opts.SockRedirect {
		return "socket redirection for host -> sandbox TCP: off (--sock-redirect not set)"
	}
	if f.redir == nil {
		if f.redirErr != nil {
			return "socket redirection for host -> sandbox TCP: off: " + f.redirErr.Error()
		}
		return "socket redirection for host -> sandbox TCP: off"
	}
	s := "socket redirection for host -> sandbox TCP (sockops, sk_msg) on cgroup " + f.redirCgroup
	s += fmt.Sprintf(", while TCP uses under %d MiB", f.redirMemMax*uint64(os.Getpagesize())>>20)
	if conns, err := f.redir.Conns(); err == nil {
		s += fmt.Sprintf(": %s", count(len(conns), "socket", "sockets"))
	}
	return s
}

// addRedirMetrics reports the programs and what they redirected.
func (f *Forwarder) addRedirMetrics(m *datapath.Metrics) error {
	if f.redir == nil {
		return nil
	}
	m.Programs["cgroup-sockops"] = 1
	m.Programs["sk-msg"] = 1
	st, err := f.redir.Stats()
	if err != nil {
		return err
	}
	m.Counters = append(m.Counters, datapath.Counter{
		Direction: bpf.DirSocket.String(), Verdict: bpf.VerdictRedirect.String(), Reason: "sock-redirect",
		Packets: st.Msgs, Bytes: st.Bytes,
	})
	return nil
}
