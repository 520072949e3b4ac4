//go:build linux

package bpf

import (
	fabricns "github.com/fabricnet/fabric/datapath/netns"

	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// The socket hooks cannot run under BPF_PROG_TEST_RUN (the kernel does not
// support it for sock_addr programs), so they are tested for real: attached
// to a cgroup of their own, with clients re-executed from this test binary
// inside that cgroup and inside a "host" namespace, talking to echo servers
// in a "sandbox" namespace behind a veth. Nothing outside the namespaces
// and the cgroup the test makes is touched.

func TestSockCgroup2Mounts(t *testing.T) {
	const mountinfo = `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
25 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
27 26 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
28 26 0:25 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,name=systemd
40 22 0:24 /kubepods/pod1 /var/lib/ctr/cgroup rw,relatime - cgroup2 cgroup2 rw
41 22 0:24 / /run/with\040space rw,relatime shared:11 master:9 - cgroup2 cgroup2 rw
42 22 0:26 / /mnt/odd rw - cgroup2
`
	got, err := cgroup2Mounts(strings.NewReader(mountinfo))
	if err != nil {
		t.Fatal(err)
	}
	// The sub-tree mount (40) and the v1 hierarchy (28) are not roots to
	// attach to; optional fields (shared:, master:) shift nothing.
	want := []string{"/sys/fs/cgroup/unified", "/run/with space", "/mnt/odd"}
	if !slices.Equal(got, want) {
		t.Errorf("cgroup2 mounts %q, want %q", got, want)
	}
	if got := fabricns.UnescapeMountPath(`a\134b\011c\`); got != "a\\b\tc\\" {
		t.Errorf("unescape: %q", got)
	}
}

func TestSockCgroupV2Root(t *testing.T) {
	root, err := CgroupV2Root()
	if errors.Is(err, ErrNoCgroup2) {
		t.Skip("skipping: no cgroup v2 hierarchy on this machine")
	}
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		t.Fatalf("%s is not a cgroup2 mount (statfs %v, type %#x)", root, err, st.Type)
	}
	t.Logf("cgroup v2 root: %s", root)
}

func TestSockNetNSCookie(t *testing.T) {
	netnstest.RequireRoot(t)
	_, p1 := netnstest.New(t, "fbc")
	_, p2 := netnstest.New(t, "fbc")
	cookie := func(path string) uint64 {
		t.Helper()
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		c, err := NetNSCookie(int(f.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	own := cookie("/proc/self/ns/net")
	c1, c2 := cookie(p1), cookie(p2)
	if c1 == 0 || c1 == c2 || c1 == own || c2 == own {
		t.Errorf("cookies not distinct: own %d, %s %d, %s %d", own, p1, c1, p2, c2)
	}
	if again := cookie(p1); again != c1 {
		t.Errorf("cookie of %s changed from %d to %d", p1, c1, again)
	}
	// The value a socket made directly in our namespace reports.
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	direct, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		t.Fatal(err)
	}
	if direct != own {
		t.Errorf("own namespace: NetNSCookie %d, SO_NETNS_COOKIE %d", own, direct)
	}
}

func TestSockLoadSharesMaps(t *testing.T) {
	o := load(t)
	other := load(t)

	// Replacing a shared map with another object's would split the
	// programs' view of the ports; the caller's options stay as they were.
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{"ports": other.objs.Ports}}
	if _, err := LoadSock(o, opts); !errors.Is(err, ErrInvalid) {
		t.Errorf("LoadSock with a foreign ports map: %v, want ErrInvalid", err)
	}
	if len(opts.MapReplacements) != 1 {
		t.Errorf("LoadSock changed the caller's MapReplacements: %v", opts.MapReplacements)
	}

	s := mustLoadOn(t, o, "socket hooks", LoadSock)
	for name, m := range map[string]*ebpf.Map{"ports": s.objs.Ports, "host_config": s.objs.HostConfig, "counters": s.objs.Counters} {
		a, err := m.Info()
		if err != nil {
			t.Fatal(err)
		}
		b, err := o.sharedMaps()[name].Info()
		if err != nil {
			t.Fatal(err)
		}
		ida, _ := a.ID()
		idb, _ := b.ID()
		if ida != idb {
			t.Errorf("socket hooks' %s is map %d, the shared one is %d", name, ida, idb)
		}
	}
	if s.ReverseMap().Type() != ebpf.LRUHash {
		t.Errorf("reverse map type %v", s.ReverseMap().Type())
	}
	for _, p := range []*ebpf.Program{s.Connect4(), s.Sendmsg4(), s.Recvmsg4(), s.Getpeername4(), s.Release()} {
		if p == nil {
			t.Fatal("a program accessor returned nil")
		}
	}

	// Closing the hooks leaves the shared maps (held as clones) usable.
	s2, err := LoadSock(o, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := o.PutPort(Port{Proto: ProtoTCP, HostPort: 1, Target: ip("10.1.0.2"), TargetPort: 1}); err != nil {
		t.Errorf("shared map unusable after closing the socket hooks: %v", err)
	}

	// A directory that is no cgroup: nothing may stay attached, and the
	// error says which hook failed.
	if _, err := s.AttachCgroup(t.TempDir()); err == nil || !strings.Contains(err.Error(), "sock_release") {
		t.Errorf("attach to a plain directory: %v", err)
	}
}

func TestSockHooks(t *testing.T) {
	l := newSockLab(t)

	t.Run("published port", func(t *testing.T) { checkPublishedPorts(t, l) })

	t.Run("not published", func(t *testing.T) {
		l.checkUntouched(t, l.host, append(
			wantsFrom("host", sockProbe{"tcp", "127.0.0.1:18081"}, sockProbe{"udp", "127.0.0.1:18081"}, sockProbe{"udp-sendto", "127.0.0.1:18081"}),
			// 127.0.0.1:18082 does not answer on the host's addresses.
			wantsFrom("host", sockProbe{"tcp", sockHostAddr + ":18082"},
				// An address of the host that fabric was not told about.
				sockProbe{"tcp", sockHostVeth + ":18080"})...))
	})

	t.Run("other namespace", func(t *testing.T) {
		l.checkUntouched(t, l.other, wantsFrom("other",
			sockProbe{"tcp", "127.0.0.1:18080"}, sockProbe{"udp", "127.0.0.1:18080"}, sockProbe{"udp-sendto", "127.0.0.1:18080"}))
	})

	t.Run("port removed", func(t *testing.T) {
		for _, proto := range []uint8{ProtoTCP, ProtoUDP} {
			if err := l.objs.DeletePort(Port{Proto: proto, HostPort: 18080}); err != nil {
				t.Fatal(err)
			}
		}
		l.checkUntouched(t, l.host, wantsFrom("host",
			sockProbe{"tcp", "127.0.0.1:18080"}, sockProbe{"tcp", sockHostAddr + ":18080"},
			sockProbe{"udp", "127.0.0.1:18080"}, sockProbe{"udp-sendto", "127.0.0.1:18080"}))
	})
}

// checkPublishedPorts: connections and datagrams from the host to a
// published port reach the sandbox, each socket sees the address it sent
// to as its peer, and the counters and reverse entries say so.
func checkPublishedPorts(t *testing.T, l *sockLab) {
	wants := wantsFrom("sandbox",
		sockProbe{"tcp", "127.0.0.1:18080"}, sockProbe{"tcp", "127.0.0.2:18080"}, sockProbe{"tcp", sockHostAddr + ":18080"},
		sockProbe{"udp", "127.0.0.1:18080"}, sockProbe{"udp", sockHostAddr + ":18080"},
		// Two published addresses lead to one endpoint port: each
		// socket sees its reply from the address it sent to.
		sockProbe{"udp-sendto", "127.0.0.1:18080"}, sockProbe{"udp-sendto", sockHostAddr + ":18080"},
		// Published on 127.0.0.1 only.
		sockProbe{"tcp", "127.0.0.1:18082"})
	delta := l.check(t, l.host, wants)
	t.Logf("socket counters moved: %v", delta)
	rewrites := delta[CounterKey{DirSocket, VerdictPass, ReasonSockRewrite}]
	if rewrites.Packets != uint64(len(wants)) { // one connect or one sendto each
		t.Errorf("sock-rewrite counted %d, want %d", rewrites.Packets, len(wants))
	}
	// At least one getpeername per connected socket (Go's dial) and one
	// recvmsg per unconnected reply.
	if replies := delta[CounterKey{DirSocket, VerdictPass, ReasonSockReply}]; replies.Packets < uint64(len(wants)) {
		t.Errorf("sock-reply counted %d, want at least %d", replies.Packets, len(wants))
	}
	if len(delta) != 2 {
		t.Errorf("socket counters moved: %v", delta)
	}
	// The helper has exited: its connected sockets removed their
	// reverse entries on release, the two unconnected ones cannot.
	var (
		k    sockSockRevKey
		v    sockSockRevValue
		left int
	)
	for it := l.sock.ReverseMap().Iterate(); it.Next(&k, &v); {
		left++
	}
	if left != 2 {
		t.Errorf("%d reverse entries left, want 2 (one per unconnected socket)", left)
	}
}
