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
			until(t, 10*time.Second, "overlay network on n2", func() error {
				if _, ok := l.network(2, "ov"); !ok {
					return fmt.Errorf("n2 has no network ov")
				}
				return nil
			})
			s1, s2 := l.name+"h1", l.name+"h2"
			ip1 := l.sandboxIP(1, s1, "--network", "ov", "--", "python3", "-c", echoServer)
			ip2 := l.sandboxIP(2, s2, "--network", "ov", "--", "python3", "-c", echoServer)
			until(t, 10*time.Second, "echo s1 -> s2", echo(s1, ip2))
			ov, _ := l.network(1, "ov")
			ep1 := l.endpointOf(1, s1)

			// The agent's own ports, from the sandbox.
			for _, port := range []string{"7946", "9475"} {
				before := l.dropCounter(1, "from-endpoint", "host-port")
				if out, err := inSandbox(s1, "python3", "-c", tcpReach, l.ip(1), port); err == nil {
					t.Errorf("sandbox opened n1's port %s: %s", port, out)
				}
				until(t, 5*time.Second, "host-port drop counted for port "+port, func() error {
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
			until(t, 5*time.Second, "sandbox's VXLAN counted as host-port", func() error {
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
			until(t, 5*time.Second, "stranger's VXLAN counted as tunnel-source", func() error {
				if got := l.dropCounter(1, "from-tunnel", "tunnel-source"); got <= before {
					return fmt.Errorf("tunnel-source drops %v, were %v", got, before)
				}
				return nil
			})
			// The real thing still works.
			until(t, 10*time.Second, "echo s2 -> s1 after the attacks", echo(s2, ip1))
		})
	}
}
