package lab_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// Hostile traffic against the datapath (issue 14): from inside a sandbox
// and from a stranger on the underlay.

// vxlanSend sends three VXLAN packets to argv[1]:argv[2] with VNI argv[3],
// carrying a UDP datagram from argv[5] to argv[6] for MAC argv[4].
const vxlanSend = `
import socket, struct, sys
dst, port, vni = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
dmac, isrc, idst = bytes.fromhex(sys.argv[4].replace(":", "")), sys.argv[5], sys.argv[6]
udp = struct.pack("!HHHH", 5555, 9, 12, 0) + b"test"
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton(isrc), socket.inet_aton(idst))
s = sum(struct.unpack("!10H", ip)); s = (s & 0xffff) + (s >> 16); s = (s & 0xffff) + (s >> 16)
ip = ip[:10] + struct.pack("!H", ~s & 0xffff) + ip[12:]
frame = bytes([8, 0, 0, 0]) + struct.pack("!I", vni << 8) + dmac + bytes.fromhex("020000eeee01") + b"\x08\x00" + ip + udp
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3): u.sendto(frame, (dst, port))
`

// tcpReach exits 0 if a TCP connection to argv[1]:argv[2] opens within 1 s.
const tcpReach = `
import socket, sys
socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
`

// synFlood sends argv[3] bare TCP SYNs from this namespace's address
// argv[4] (ports 20000 on) to argv[1]:argv[2] over a raw socket.
const synFlood = `
import socket, struct, sys
dst, dport, n, src = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
def csum(b):
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b)); t = (t & 0xffff) + (t >> 16); t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
for i in range(n):
    seg = struct.pack("!HHIIBBHHH", 20000 + i % 40000, dport, i, 0, 5 << 4, 2, 64240, 0, 0)
    ph = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(seg))
    seg = seg[:16] + struct.pack("!H", csum(ph + seg)) + seg[18:]
    s.sendto(seg, (dst, 0))
`

// fetchMetrics prints http://argv[1]/metrics.
const fetchMetrics = `
import sys, urllib.request
print(urllib.request.urlopen("http://%s/metrics" % sys.argv[1], timeout=3).read().decode())
`

// inNetns runs argv in a named namespace, bounded by 20 s.
func inNetns(ns string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...).CombinedOutput()
	return string(out), err
}

// metric is node i's value of the metrics line starting with prefix (a
// name and its labels), 0 if absent.
func (l *testLab) metric(i int, prefix string) float64 {
	l.t.Helper()
	out, err := inNetns(l.name+"-ul", "python3", "-c", fetchMetrics, l.ip(i)+":9475")
	if err != nil {
		l.t.Fatalf("metrics of n%d: %v\n%s", i, err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, prefix+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

// dropCounter is node i's fabric_datapath_packets_total for a drop under
// direction and reason, read from its metrics endpoint (0 if absent).
func (l *testLab) dropCounter(i int, direction, reason string) float64 {
	l.t.Helper()
	out, err := inNetns(l.name+"-ul", "python3", "-c", fetchMetrics, l.ip(i)+":9475")
	if err != nil {
		l.t.Fatalf("metrics of n%d: %v\n%s", i, err, out)
	}
	want := fmt.Sprintf(`fabric_datapath_packets_total{direction=%q,reason=%q,verdict="drop"} `, direction, reason)
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, want); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

func (l *testLab) endpointOf(i int, sb string) api.Endpoint {
	l.t.Helper()
	var sbs []api.Sandbox
	out := l.on(i, "sandbox", "inspect", sb)
	if err := json.Unmarshal([]byte(out), &sbs); err != nil || len(sbs) != 1 || len(sbs[0].Endpoints) == 0 {
		l.t.Fatalf("sandbox inspect %s: %v %q", sb, err, out)
	}
	return sbs[0].Endpoints[0]
}

// TestHostileDatapath: on both datapaths, a sandbox cannot open the
// host's gossip or metrics port, nor inject into the overlay through the
// host's VXLAN port; a stranger on the underlay cannot inject either. Each
// attempt is dropped and counted; the overlay keeps working.
func TestHostileDatapath(t *testing.T) {
	for _, dp := range []string{"kernel", "ebpf"} {
		t.Run(dp, func(t *testing.T) {
			l := newTestLab(t)
			l.up(2, dp)
			l.on(1, "network", "create", "-d", "overlay", "--subnet", "10.76.0.0/16", "ov")
			l.waitNetworkOn(t, "ov", 10*time.Second, 2)
			s1, s2 := l.name+"h1", l.name+"h2"
			ip1 := l.sandboxIP(1, s1, "--network", "ov", "--", "python3", "-c", echoServer)
			ip2 := l.sandboxIP(2, s2, "--network", "ov", "--", "python3", "-c", echoServer)
			netnstest.Until(t, 10*time.Second, "echo s1 -> s2", echo(s1, ip2))
			ov, _ := l.network(1, "ov")
			ep1 := l.endpointOf(1, s1)

			// The agent's own ports, from the sandbox.
			for _, port := range []string{"7946", "9475"} {
				before := l.dropCounter(1, "from-endpoint", "host-port")
				if out, err := inSandbox(s1, "python3", "-c", tcpReach, l.ip(1), port); err == nil {
					t.Errorf("sandbox opened n1's port %s: %s", port, out)
				}
				netnstest.Until(t, 5*time.Second, "host-port drop counted for port "+port, func() error {
					if got := l.dropCounter(1, "from-endpoint", "host-port"); got <= before {
						return fmt.Errorf("host-port drops %v, were %v", got, before)
					}
					return nil
				})
			}
			// Spoofed VXLAN from the sandbox to its own host's tunnel port,
			// claiming to be s2.
			before := l.dropCounter(1, "from-endpoint", "host-port")
			if out, err := inSandbox(s1, "python3", "-c", vxlanSend, l.ip(1), "4789", fmt.Sprint(ov.VNI), ep1.MAC, ip2, ip1); err != nil {
				t.Fatalf("send from sandbox: %v %s", err, out)
			}
			netnstest.Until(t, 5*time.Second, "sandbox's VXLAN counted as host-port", func() error {
				if got := l.dropCounter(1, "from-endpoint", "host-port"); got <= before {
					return fmt.Errorf("host-port drops %v, were %v", got, before)
				}
				return nil
			})
			// The same from a stranger on the underlay (its gateway).
			before = l.dropCounter(1, "from-tunnel", "tunnel-source")
			if out, err := inNetns(l.name+"-ul", "python3", "-c", vxlanSend, l.ip(1), "4789", fmt.Sprint(ov.VNI), ep1.MAC, ip2, ip1); err != nil {
				t.Fatalf("send from the underlay: %v %s", err, out)
			}
			netnstest.Until(t, 5*time.Second, "stranger's VXLAN counted as tunnel-source", func() error {
				if got := l.dropCounter(1, "from-tunnel", "tunnel-source"); got <= before {
					return fmt.Errorf("tunnel-source drops %v, were %v", got, before)
				}
				return nil
			})
			// The real thing still works.
			netnstest.Until(t, 10*time.Second, "echo s2 -> s1 after the attacks", echo(s2, ip1))
		})
	}
}

// TestSYNFloodLab: on both datapaths, a SYN flood from the underlay against
// a published port while a sandbox's masqueraded TCP stream runs to the
// underlay: the stream keeps flowing, never reset; on the eBPF datapath the
// flood past the source's quota is dropped and counted.
func TestSYNFloodLab(t *testing.T) {
	for _, dp := range []string{"kernel", "ebpf"} {
		t.Run(dp, func(t *testing.T) {
			l := newTestLab(t)
			l.up(1, dp)
			gw := fmt.Sprintf("10.99.%d.1", l.third)
			server := exec.Command("ip", "netns", "exec", l.name+"-ul", "python3", "-c", echoServer)
			if err := server.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = server.Process.Kill(); _ = server.Wait() })
			pub := l.name + "p"
			l.sandboxIP(1, pub, "-p", "8070:7000", "--", "python3", "-c", echoServer)
			client := l.name + "c"
			l.sandboxIP(1, client, "--", "sleep", "300")
			netnstest.Until(t, 10*time.Second, "echo from the sandbox to the underlay", echo(client, gw))

			stream := make(chan error, 1)
			go func() {
				out, err := inSandbox(client, "python3", "-c", streamClient, gw, "7000", "6")
				if err != nil {
					err = fmt.Errorf("%w: %s", err, out)
				}
				stream <- err
			}()
			netnstest.Until(t, 10*time.Second, "the stream to the underlay under way", streaming(client, "7000"))
			before := l.metric(1, "fabric_conntrack_quota_drops_total")
			const flood = 5000
			if out, err := inNetns(l.name+"-ul", "python3", "-c", synFlood, l.ip(1), "8070", fmt.Sprint(flood), gw); err != nil {
				t.Fatalf("flood: %v %s", err, out)
			}
			if err := <-stream; err != nil {
				t.Errorf("masqueraded stream during a SYN flood: %v", err)
			}
			if dp == "ebpf" {
				dropped := l.metric(1, "fabric_conntrack_quota_drops_total") - before
				if dropped < flood/4 {
					t.Errorf("%v of %d flood SYNs dropped over the quota, want most past the first 2048", dropped, flood)
				}
				t.Logf("flood of %d SYNs: %v dropped over the quota", flood, dropped)
			}
			// The flooding source itself gets in again once its window
			// (5 s) has passed.
			netnstest.Until(t, 15*time.Second, "the published port from the underlay after the flood", func() error {
				out, err := inNetns(l.name+"-ul", "python3", "-c", tcpReach, l.ip(1), "8070")
				if err != nil {
					return fmt.Errorf("%w: %s", err, out)
				}
				return nil
			})
		})
	}
}
