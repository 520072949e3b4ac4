package cluster

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func newTestTransport(t *testing.T) *transport {
	t.Helper()
	tr, err := newTransport("127.0.0.1", 0, testLogger())
	if err != nil {
		t.Fatalf("newTransport: %v", err)
	}
	t.Cleanup(func() { _ = tr.Shutdown() })
	return tr
}

func TestTransportPacketsAndStreams(t *testing.T) {
	a, b := newTestTransport(t), newTestTransport(t)
	if a.Port() == 0 || a.Port() == b.Port() {
		t.Fatalf("ports %d and %d: want two distinct kernel-picked ports", a.Port(), b.Port())
	}
	bAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(b.Port())).String()

	// Datagrams arrive whole, each in a buffer of its own size (not the
	// 64 KiB read buffer), with the sender's address.
	for _, size := range []int{1, 1400, 9000} {
		msg := bytes.Repeat([]byte{byte(size)}, size)
		if _, err := a.WriteToAddress(msg, memberlist.Address{Addr: bAddr, Name: "b"}); err != nil {
			t.Fatalf("write %d bytes: %v", size, err)
		}
		select {
		case p := <-b.PacketCh():
			if !bytes.Equal(p.Buf, msg) || cap(p.Buf) > 2*size+64 {
				t.Fatalf("%d bytes sent, got len %d cap %d", size, len(p.Buf), cap(p.Buf))
			}
			if from := p.From.(*net.UDPAddr).AddrPort(); from.Port() != uint16(a.Port()) || from.Addr() != netip.MustParseAddr("127.0.0.1") {
				t.Fatalf("from %v, want 127.0.0.1:%d", p.From, a.Port())
			}
			if p.Timestamp.IsZero() {
				t.Fatal("no receive timestamp")
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%d-byte datagram not received", size)
		}
	}
	// A second datagram must not overwrite the first one's buffer.
	_, _ = a.WriteTo([]byte("first"), bAddr)
	p1 := <-b.PacketCh()
	_, _ = a.WriteTo([]byte("second"), bAddr)
	<-b.PacketCh()
	if string(p1.Buf) != "first" {
		t.Fatalf("first packet's buffer now holds %q", p1.Buf)
	}

	conn, err := a.DialAddressTimeout(memberlist.Address{Addr: bAddr}, time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	var in net.Conn
	select {
	case in = <-b.StreamCh():
	case <-time.After(5 * time.Second):
		t.Fatal("stream not accepted")
	}
	defer in.Close()
	if _, err := conn.Write([]byte("push/pull")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("push/pull"))
	_ = in.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(in, got); err != nil || string(got) != "push/pull" {
		t.Fatalf("stream read %q, %v", got, err)
	}

	if _, err := a.WriteTo([]byte("x"), "no-such-host.invalid:1"); err == nil {
		t.Fatal("write to an unresolvable address succeeded")
	}
}

func TestTransportAdvertiseAddr(t *testing.T) {
	tr := newTestTransport(t)
	for _, tc := range []struct {
		ip       string
		port     int
		wantIP   string
		wantPort int
	}{
		{"", 0, "127.0.0.1", tr.Port()},      // the bound address and port
		{"", 7000, "127.0.0.1", tr.Port()},   // no address given: the bound port
		{"10.1.2.3", 7946, "10.1.2.3", 7946}, // given: as given
		{"10.1.2.3", 0, "10.1.2.3", tr.Port()},
		{"::ffff:10.1.2.3", 7946, "10.1.2.3", 7946},
	} {
		ip, port, err := tr.FinalAdvertiseAddr(tc.ip, tc.port)
		if err != nil || ip.String() != tc.wantIP || port != tc.wantPort {
			t.Errorf("FinalAdvertiseAddr(%q, %d) = %v, %d, %v; want %s, %d", tc.ip, tc.port, ip, port, err, tc.wantIP, tc.wantPort)
		}
	}
	if _, _, err := tr.FinalAdvertiseAddr("10.1.2", 1); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad advertise address: err %v, want ErrInvalid", err)
	}
}

func TestTransportShutdownReleasesPort(t *testing.T) {
	tr, err := newTransport("127.0.0.1", 0, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	port := tr.Port()
	if _, err := newTransport("127.0.0.1", port, testLogger()); err == nil {
		t.Fatalf("second transport bound port %d in use", port)
	}
	done := make(chan error, 1)
	go func() { done <- tr.Shutdown() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	if err := tr.Shutdown(); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	again, err := newTransport("127.0.0.1", port, testLogger())
	if err != nil {
		t.Fatalf("port %d not released: %v", port, err)
	}
	_ = again.Shutdown()
	if _, err := newTransport("not-an-ip", 0, testLogger()); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad bind address: err %v, want ErrInvalid", err)
	}
}
