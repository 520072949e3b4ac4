//go:build linux

package bpf

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	fabricns "github.com/fabricnet/fabric/datapath/netns"
)

// ErrNoCgroup2 is returned by CgroupV2Root when no cgroup v2 hierarchy is
// mounted: socket hooks need one (cgroup v1 cannot run BPF programs).
var ErrNoCgroup2 = errors.New("no cgroup v2 hierarchy mounted")

// Sock are the cgroup socket hooks of sock.c: host-local clients of
// published ports are sent straight to the endpoint at connect/sendmsg time
// instead of through NAT. They read the shared maps (ports, host_addrs,
// host_config, counters) of the Objects they were loaded with, so publishing
// a port with Objects.PutPort serves it to local clients too. The only state
// of their own is the reverse map, which the programs fill and empty
// themselves: nothing has to be kept in sync from Go.
//
// The hooks act only on sockets of the namespace whose cookie is
// HostConfig.NetNSCookie (see NetNSCookie); until that is set they change
// nothing.
type Sock struct {
	objs sockObjects
}

// LoadSock loads the socket hooks on top of shared's maps. opts may be nil;
// its MapReplacements may name "sock_reverse" (a pinned reverse map to keep
// across restarts) but not a shared map, which always comes from shared.
func LoadSock(shared *Objects, opts *ebpf.CollectionOptions) (*Sock, error) {
	return loadOn(shared, "socket hooks", loadSock, opts, func(o sockObjects) *Sock { return &Sock{objs: o} })
}

// Connect4 rewrites TCP connect and UDP connect to a published port.
func (s *Sock) Connect4() *ebpf.Program { return s.objs.SockConnect4 }

// Sendmsg4 rewrites unconnected UDP sends to a published port.
func (s *Sock) Sendmsg4() *ebpf.Program { return s.objs.SockSendmsg4 }

// Recvmsg4 shows a UDP reply from an endpoint as coming from the published
// address:port the socket sent to.
func (s *Sock) Recvmsg4() *ebpf.Program { return s.objs.SockRecvmsg4 }

// Getpeername4 shows a rewritten socket's peer as the published address:port.
func (s *Sock) Getpeername4() *ebpf.Program { return s.objs.SockGetpeername4 }

// Release forgets a connected socket's reverse entry when it is closed.
func (s *Sock) Release() *ebpf.Program { return s.objs.SockRelease }

// ReverseMap is the per-socket reverse map (socket cookie, endpoint
// address:port -> published address:port), for pinning: a restarted agent
// that re-attaches new programs should load them with the pinned map in
// opts.MapReplacements["sock_reverse"], so that sockets rewritten before the
// restart still see their replies from the published address.
func (s *Sock) ReverseMap() *ebpf.Map { return s.objs.SockReverse }

// sockHook is one program and where it attaches.
type sockHook struct {
	name   string
	attach ebpf.AttachType
	prog   *ebpf.Program
}

// hooks lists the programs in attach order: the reply side first, so that
// no socket is rewritten before its replies can be translated back.
func (s *Sock) hooks() []sockHook {
	return []sockHook{
		{"sock_release", ebpf.AttachCgroupInetSockRelease, s.objs.SockRelease},
		{"recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, s.objs.SockRecvmsg4},
		{"getpeername4", ebpf.AttachCgroupInet4GetPeername, s.objs.SockGetpeername4},
		{"connect4", ebpf.AttachCGroupInet4Connect, s.objs.SockConnect4},
		{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, s.objs.SockSendmsg4},
	}
}

// SockHook is one socket hook as a datapath pins it: a stable name, where
// it attaches and the program.
type SockHook struct {
	Name    string
	Attach  ebpf.AttachType
	Program *ebpf.Program
}

// Hooks lists the hooks in attach order (see AttachCgroup), for a caller
// that attaches and pins them one by one.
func (s *Sock) Hooks() []SockHook {
	var out []SockHook
	for _, h := range s.hooks() {
		out = append(out, SockHook{Name: h.name, Attach: h.attach, Program: h.prog})
	}
	return out
}

// AttachCgroup attaches every hook to the cgroup v2 directory at path and
// returns the links in attach order; close them in reverse order (forward
// hooks first) and before closing s. The hooks apply to every process in
// the cgroup and its descendants, whatever its namespace; the namespace is
// checked by the programs. On error nothing stays attached.
func (s *Sock) AttachCgroup(path string) (_ []link.Link, err error) {
	var links []link.Link
	defer func() {
		if err != nil {
			for i := len(links) - 1; i >= 0; i-- {
				err = errors.Join(err, links[i].Close())
			}
		}
	}()
	for _, h := range s.hooks() {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: h.attach, Program: h.prog})
		if err != nil {
			return nil, fmt.Errorf("attach %s to cgroup %s: %w", h.name, path, err)
		}
		links = append(links, l)
	}
	return links, nil
}

// Close releases the programs and the reverse map; the shared maps belong
// to the Objects LoadSock was given. Close the links first.
func (s *Sock) Close() error {
	return closeAll("socket hooks", &s.objs.sockPrograms, &s.objs.sockMaps)
}

// CgroupV2Root returns where the cgroup v2 hierarchy's root is mounted:
// /sys/fs/cgroup on a unified system, /sys/fs/cgroup/unified on a hybrid
// one. Mounts of a sub-tree (a container's view) are skipped, since hooks
// attached there would miss the host's other processes.
func CgroupV2Root() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup v2 mount: %w", err)
	}
	defer f.Close()
	candidates, err := cgroup2Mounts(f)
	if err != nil {
		return "", fmt.Errorf("find cgroup v2 mount: %w", err)
	}
	for _, p := range candidates {
		// mountinfo can be stale or overmounted; the filesystem itself says.
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return p, nil
		}
	}
	return "", ErrNoCgroup2
}

// cgroup2Mounts returns the mount points of cgroup2 filesystems whose root
// is the hierarchy's root, in mountinfo order (see proc(5)):
//
//	36 35 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw
//	id par dev root point options [optional...] - fstype source super
func cgroup2Mounts(r io.Reader) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" && i >= 6 {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(fields) || fields[sep+1] != "cgroup2" || fields[3] != "/" {
			continue
		}
		out = append(out, fabricns.UnescapeMountPath(fields[4]))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return out, nil
}

// NetNSCookie returns the cookie of the network namespace nsFD refers to
// (an open /proc/PID/ns/net or /var/run/netns/NAME), the value the socket
// hooks compare with HostConfig.NetNSCookie. For the agent's own namespace
// open /proc/self/ns/net. Needs Linux 5.14 (SO_NETNS_COOKIE).
func NetNSCookie(nsFD int) (uint64, error) {
	type result struct {
		cookie uint64
		err    error
	}
	done := make(chan result, 1)
	// Only the socket has to be made inside the namespace; it stays there
	// after the thread switches back, so the getsockopt can follow outside.
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("open current netns: %w", err)}
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(nsFD, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("enter netns: %w", err)}
			return
		}
		fd, sockErr := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			if sockErr == nil {
				unix.Close(fd)
			}
			// The thread stays locked: the runtime destroys it with this
			// goroutine instead of reusing it in the wrong namespace.
			done <- result{err: fmt.Errorf("return to original netns: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		if sockErr != nil {
			done <- result{err: fmt.Errorf("socket in netns: %w", sockErr)}
			return
		}
		defer unix.Close(fd)
		cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		if err != nil {
			err = fmt.Errorf("get SO_NETNS_COOKIE (Linux 5.14 or later): %w", err)
		}
		done <- result{cookie: cookie, err: err}
	}()
	r := <-done
	return r.cookie, r.err
}
