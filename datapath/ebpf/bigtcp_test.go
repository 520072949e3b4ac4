package ebpf

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	fabricns "github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// TestHostToEndpointBigTCP: on a kernel with BIG TCP for IPv4, an
// endpoint's host veth takes 192 KiB packets while the sandbox side keeps
// the kernel's default, and a stream from the host namespace to the
// sandbox (the path of a published port reached from 127.0.0.1) arrives
// whole, in packets larger than 64 KiB.
func TestHostToEndpointBigTCP(t *testing.T) {
	l := newUpgradeLab(t)
	nl := netnstest.Handle(t, l.a.path)
	defer nl.Close()
	if !bigTCPSupported(nl) {
		t.Skip("needs BIG TCP for IPv4 (Linux 6.3+): this kernel reports no gso_ipv4_max_size")
	}
	host, err := nl.LinkByName(l.a.ep.HostIfName)
	if err != nil {
		t.Fatal(err)
	}
	if got := host.Attrs().GSOIPv4MaxSize; got != bigTCPSize {
		t.Errorf("host veth %s: gso_ipv4_max_size %d, want %d", host.Attrs().Name, got, bigTCPSize)
	}
	sbl := netnstest.Handle(t, l.a.ep.NetNSPath)
	defer sbl.Close()
	peer, err := sbl.LinkByName(l.a.ep.IfName)
	if err != nil {
		t.Fatal(err)
	}
	if got := peer.Attrs().GSOIPv4MaxSize; got > 65536 {
		t.Errorf("sandbox side %s: gso_ipv4_max_size %d, want the kernel's 64 KiB default", l.a.ep.IfName, got)
	}

	largest := watchLargestFrame(t, l.a.ep.NetNSPath, peer.Attrs().Index)
	ln := netnstest.Serve(t, l.a.ep.NetNSPath, "tcp4", net.JoinHostPort(l.a.ep.Addr.Addr().String(), "0"), time.Minute, netnstest.HashEcho)
	c, err := netnstest.Dial(l.a.path, "tcp4", ln.Addr().String(), 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	if err := netnstest.CheckEcho(c.(*net.TCPConn), 64<<20, 7); err != nil {
		t.Fatalf("host → sandbox stream: %v", err)
	}
	if got := largest(); got <= 65536 {
		t.Errorf("largest frame the sandbox received was %d bytes, want BIG TCP packets over 64 KiB", got)
	}
}

// watchLargestFrame reads the frames ifindex receives in the namespace at
// nsPath through a packet socket until the test ends; the returned func
// reports the largest frame's length so far (a GSO packet counts whole).
func watchLargestFrame(t *testing.T, nsPath string, ifindex int) func() int {
	t.Helper()
	var fd int
	err := fabricns.Do(nsPath, func() (err error) {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(netnstest.Htons(unix.ETH_P_IP)))
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: netnstest.Htons(unix.ETH_P_IP), Ifindex: ifindex})
	})
	if err != nil {
		t.Fatalf("packet socket: %v", err)
	}
	tv := unix.NsecToTimeval(int64(200 * time.Millisecond))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	var largest atomic.Int64
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 128)
		deadline := time.Now().Add(2 * time.Minute)
		for !stop.Load() && time.Now().Before(deadline) {
			// MSG_TRUNC: the frame's real length, whatever the buffer.
			n, _, err := unix.Recvfrom(fd, buf, unix.MSG_TRUNC)
			if err != nil {
				continue
			}
			if int64(n) > largest.Load() {
				largest.Store(int64(n))
			}
		}
	}()
	t.Cleanup(func() {
		stop.Store(true)
		<-done
		unix.Close(fd)
	})
	return func() int { return int(largest.Load()) }
}
