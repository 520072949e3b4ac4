//go:build linux

package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// SockRedir is socket-level redirection for TCP connections from the host
// to a sandbox on the same host (sockredir.c): a sockops program on a
// cgroup puts both ends of such a connection into a socket hash, and an
// sk_msg program on that hash moves every sendmsg straight into the peer
// socket, past both TCP stacks and the veth. It reads the shared maps
// (endpoint_by_ip, host_config) of the Objects it was loaded with; its own
// state (the socket hash, the pending server ends, per-socket decisions)
// the programs fill and empty themselves.
//
// Like the socket hooks it acts only for the namespace whose cookie is
// HostConfig.NetNSCookie, and until that is set it changes nothing.
type SockRedir struct {
	objs sockredirObjects
}

// SockRedirMaps are the maps of SockRedir's own, by name: what a datapath
// pins so that a restarted agent keeps the redirected connections (a
// socket leaves the hash, and loses what is queued for it, when the hash
// is freed).
var SockRedirMaps = []string{"redir_socks", "redir_pending", "redir_state", "redir_stats", "redir_config"}

// LoadSockRedir loads the programs on top of shared's maps. opts may be nil;
// its MapReplacements may name maps of SockRedirMaps (pinned ones to keep)
// but not a shared map.
func LoadSockRedir(shared *Objects, opts *ebpf.CollectionOptions) (*SockRedir, error) {
	return loadOn(shared, "socket redirection", loadSockredir, opts, func(o sockredirObjects) *SockRedir { return &SockRedir{objs: o} })
}

// SockOps is the program for the cgroup's sockops hook.
func (r *SockRedir) SockOps() *ebpf.Program { return r.objs.SockOps }

// Msg is the sk_msg program, attached to Socks (AttachMsg).
func (r *SockRedir) Msg() *ebpf.Program { return r.objs.SockMsg }

// Socks is the socket hash the programs fill.
func (r *SockRedir) Socks() *ebpf.Map { return r.objs.RedirSocks }

// OwnMaps are the maps of SockRedirMaps, by name, for pinning.
func (r *SockRedir) OwnMaps() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{
		"redir_socks":   r.objs.RedirSocks,
		"redir_pending": r.objs.RedirPending,
		"redir_state":   r.objs.RedirState,
		"redir_stats":   r.objs.RedirStats,
		"redir_config":  r.objs.RedirConfig,
	}
}

// SetMemMax sets how much memory TCP may have in use, in pages (the unit
// of /proc/sys/net/ipv4/tcp_mem), for a socket to start or go on being
// redirected; past it, a socket's sends go through TCP for good. The
// kernel gives redirected bytes no flow control, so this is what bounds
// them. 0, the value of a new map, redirects nothing.
func (r *SockRedir) SetMemMax(pages uint64) error {
	if err := r.objs.RedirConfig.Put(uint32(0), sockredirRedirSettings{MemMaxPages: pages}); err != nil {
		return fmt.Errorf("write redir_config: %w", err)
	}
	return nil
}

// TCPMemPages reads tcp_mem (the kernel's limits on TCP's memory, in
// pages: no pressure below the first, pressure above the second, the
// third a hard limit). It is the same in every network namespace.
func TCPMemPages() ([3]uint64, error) {
	var out [3]uint64
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_mem")
	if err != nil {
		return out, fmt.Errorf("read tcp_mem: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 3 {
		return out, fmt.Errorf("tcp_mem %q: want three numbers: %w", strings.TrimSpace(string(b)), ErrInvalid)
	}
	for i, s := range f {
		if out[i], err = strconv.ParseUint(s, 10, 64); err != nil {
			return out, fmt.Errorf("tcp_mem %q: %w", strings.TrimSpace(string(b)), err)
		}
	}
	return out, nil
}

// AttachMsg makes Msg the sk_msg program of Socks, in place of any program
// there (sockets already in the hash keep the program they joined with).
// The attachment lives as long as the map: there is no link to pin.
func (r *SockRedir) AttachMsg() error {
	err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target: r.objs.RedirSocks.FD(), Program: r.objs.SockMsg, Attach: ebpf.AttachSkMsgVerdict,
	})
	if err != nil {
		return fmt.Errorf("attach sk_msg program to redir_socks: %w", err)
	}
	return nil
}

// AttachCgroup attaches the sockops program to the cgroup v2 directory at
// path. Close the link before closing r.
func (r *SockRedir) AttachCgroup(path string) (link.Link, error) {
	l, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: ebpf.AttachCGroupSockOps, Program: r.objs.SockOps})
	if err != nil {
		return nil, fmt.Errorf("attach sockops to cgroup %s: %w", path, err)
	}
	return l, nil
}

// RedirConn is one socket in the hash, as that socket sees its connection.
type RedirConn struct {
	Local, Remote netip.AddrPort
}

func (k sockredirRedirKey) conn() RedirConn {
	return RedirConn{
		Local:  netip.AddrPortFrom(addrFromBE32(k.LocalIp), fromBE16(k.LocalPort)),
		Remote: netip.AddrPortFrom(addrFromBE32(k.RemoteIp), fromBE16(k.RemotePort)),
	}
}

// Conns lists the sockets in the hash. Keys only: a socket hash's values
// are sockets, which user space reads as cookies at best.
func (r *SockRedir) Conns() ([]RedirConn, error) {
	keys, err := r.keys()
	if err != nil {
		return nil, err
	}
	out := make([]RedirConn, 0, len(keys))
	for _, k := range keys {
		out = append(out, k.conn())
	}
	return out, nil
}

// maxIterate bounds a walk of the hash: entries come and go while it runs.
const maxIterate = 4 * 65536

func (r *SockRedir) keys() ([]sockredirRedirKey, error) {
	var out []sockredirRedirKey
	var prev, next sockredirRedirKey
	var cur any // nil: the first key
	for range maxIterate {
		err := r.objs.RedirSocks.NextKey(cur, &next)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("list redir_socks: %w", err)
		}
		out = append(out, next)
		prev = next
		cur = &prev
	}
	return out, nil
}

// Forget takes out of the hash every socket drop reports; they go on over
// TCP. It is for endpoints that were removed: a redirected connection
// would otherwise outlive its address.
// Bytes queued for such a socket and not yet read are lost, as they would
// be with its veth gone. It returns how many sockets it took out.
func (r *SockRedir) Forget(drop func(RedirConn) bool) (int, error) {
	keys, err := r.keys()
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, k := range keys {
		c := k.conn()
		if !drop(c) {
			continue
		}
		err := r.objs.RedirSocks.Delete(&k)
		switch {
		case err == nil:
			n++
		case !errors.Is(err, ebpf.ErrKeyNotExist): // closed meanwhile
			errs = append(errs, fmt.Errorf("forget %s -> %s: %w", c.Local, c.Remote, err))
		}
	}
	return n, errors.Join(errs...)
}

// RedirStats are the programs' sums since the map was made.
type RedirStats struct {
	Clients   uint64 // host sockets admitted
	Servers   uint64 // sandbox sockets admitted
	Msgs      uint64 // sendmsg calls redirected
	Bytes     uint64 // their bytes
	Passed    uint64 // sendmsg calls of admitted sockets left to TCP
	AddFailed uint64 // sockets the hash refused (full, or in another map)
	MemOff    uint64 // sockets that left redirection for TCP's memory in use
}

// Stats reads the per-CPU sums.
func (r *SockRedir) Stats() (RedirStats, error) {
	var s RedirStats
	for _, f := range []struct {
		which sockredirRedirStat
		to    *uint64
	}{
		{sockredirRedirStatREDIR_STAT_CLIENTS, &s.Clients},
		{sockredirRedirStatREDIR_STAT_SERVERS, &s.Servers},
		{sockredirRedirStatREDIR_STAT_MSGS, &s.Msgs},
		{sockredirRedirStatREDIR_STAT_BYTES, &s.Bytes},
		{sockredirRedirStatREDIR_STAT_PASSED, &s.Passed},
		{sockredirRedirStatREDIR_STAT_ADD_FAILED, &s.AddFailed},
		{sockredirRedirStatREDIR_STAT_MEM_OFF, &s.MemOff},
	} {
		var perCPU []uint64
		if err := r.objs.RedirStats.Lookup(uint32(f.which), &perCPU); err != nil {
			return s, fmt.Errorf("read redir_stats: %w", err)
		}
		for _, v := range perCPU {
			*f.to += v
		}
	}
	return s, nil
}

// Close releases the programs and the maps of r's own (unpinned ones
// disappear, and with the socket hash its sockets leave redirection);
// the shared maps belong to the Objects LoadSockRedir was given. Close the
// cgroup link first.
func (r *SockRedir) Close() error {
	return closeAll("socket redirection", &r.objs.sockredirPrograms, &r.objs.sockredirMaps)
}
