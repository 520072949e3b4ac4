package lab_test

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// Forged gossip sent to the agents' gossip ports, in clear and encrypted
// with the lab's own key, from inside a sandbox and from a non-member
// namespace on the underlay, changes nothing in the cluster. The package
// cluster's hostile tests check each attack and its counter in one
// process; this checks the real agents on a real underlay.
//
// The messages are written here byte by byte (the wire format of package
// cluster, version 2): a network create "prod" with ID (1, " ") that would
// replace the real one, a 0.0.0.0/0 overlay, a leave of node 1 and a claim
// request in node 1's name, all unsigned.
func TestLabHostileGossip(t *testing.T) {
	l := newTestLab(t)
	l.up(3, "kernel")
	l.on(1, "network", "create", "-d", "overlay", "--subnet", "10.231.0.0/16", "prod")
	var prod api.Network
	netnstest.Until(t, 20*time.Second, "prod on every node", func() error {
		for i := 1; i <= 3; i++ {
			n, ok := l.network(i, "prod")
			if !ok {
				return fmt.Errorf("not on node %d", i)
			}
			prod = n
		}
		return nil
	})
	sb := l.name + "-evil"
	l.on(2, "run", "-d", "--name", sb, "--network", "prod", "--", "sleep", "300")

	packets := l.forgedPackets(t)
	before := l.clusterState()
	dropped := func() uint64 {
		var total uint64
		for i := 1; i <= 3; i++ {
			if st, ok := l.clusterStatus(i); ok {
				total += st.MessagesDropped
			}
		}
		return total
	}
	send := func(nsPath string) {
		t.Helper()
		l.sendGossip(t, nsPath, packets)
	}

	// From the sandbox: the fabric may filter it before the agent sees it;
	// either way nothing changes.
	d0 := dropped()
	sent := time.Now()
	send(netns.Path(l.netns(2) + "-" + sb)) // the node's prefix: sandbox names are per node
	// From the underlay, as a stranger on the hosts' network: it reaches
	// the agents, which drop every packet and count it.
	send(netns.Path(l.name + "-ul"))
	netnstest.Until(t, 10*time.Second, "forged gossip from the underlay counted", func() error {
		if d := dropped(); d < d0+uint64(3*len(packets)) {
			return fmt.Errorf("%d drops counted, want at least %d more than %d", d, 3*len(packets), d0)
		}
		return nil
	})
	// Once every node has exchanged its full state since, anything
	// accepted anywhere would have spread: nothing has changed anywhere.
	netnstest.Until(t, 30*time.Second, "a full state exchange on every node since the forgeries", func() error {
		for i := 1; i <= 3; i++ {
			st, ok := l.clusterStatus(i)
			if !ok {
				return fmt.Errorf("node %d: no cluster status", i)
			}
			last, err := time.Parse(time.RFC3339, st.LastFullSync)
			if err != nil || !last.After(sent) {
				return fmt.Errorf("node %d: last full sync %q", i, st.LastFullSync)
			}
		}
		return nil
	})
	if after := l.clusterState(); after != before {
		t.Fatalf("cluster state changed:\n%s\nwas\n%s", after, before)
	}
	if n, ok := l.network(3, "prod"); !ok || n.ID != prod.ID || n.Subnet != prod.Subnet {
		t.Fatalf("prod on node 3 is %+v", n)
	}
	t.Logf("drops counted: %d", dropped()-d0)
}

// forgedPackets are the forged messages, each as memberlist's user
// message in clear and sealed with the lab's gossip key.
func (l *testLab) forgedPackets(t *testing.T) [][]byte {
	t.Helper()
	keyText, err := os.ReadFile(filepath.Join(l.dir(), "gossip.key"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(keyText)))
	if err != nil {
		t.Fatal(err)
	}
	node1 := l.name + "-n1"
	payloads := [][]byte{
		forgedNetwork("prod", NetworkLike{clock: 1, node: " ", subnet: "10.232.0.0/16", vni: 77}),
		forgedNetwork("all", NetworkLike{clock: 1, node: node1, subnet: "0.0.0.0/0", vni: 78}),
		forgedLeave(node1),
		forgedClaim(node1),
	}
	var packets [][]byte
	for _, p := range payloads {
		plain := append([]byte{8}, p...) // memberlist's user message
		packets = append(packets, plain, sealMemberlist(t, key, plain))
	}
	return packets
}

// sendGossip sends packets to every node's gossip port from inside the
// namespace at nsPath.
func (l *testLab) sendGossip(t *testing.T, nsPath string, packets [][]byte) {
	t.Helper()
	err := netns.Do(nsPath, func() error {
		for i := 1; i <= 3; i++ {
			conn, err := net.Dial("udp", net.JoinHostPort(l.ip(i), "7946"))
			if err != nil {
				return err
			}
			for _, p := range packets {
				_, _ = conn.Write(p) // a filtered port may refuse: that is fine
			}
			conn.Close()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send from %s: %v", nsPath, err)
	}
}

// clusterStatus is the cluster section of node i's status; false if it
// has none or does not answer.
func (l *testLab) clusterStatus(i int) (api.ClusterStatus, bool) {
	st, err := l.nodeStatus(i)
	if err != nil || st.Cluster == nil {
		return api.ClusterStatus{}, false
	}
	return *st.Cluster, true
}

// clusterState is what every node says about networks and members.
func (l *testLab) clusterState() string {
	var b strings.Builder
	for i := 1; i <= 3; i++ {
		out, _, _ := l.ctl("--socket", l.sock(i), "-o", "json", "network", "ls")
		var nets []api.Network
		_ = json.Unmarshal([]byte(out), &nets)
		for _, n := range nets {
			fmt.Fprintf(&b, "node %d: network %s %s %s %d\n", i, n.Name, n.ID, n.Subnet, n.VNI)
		}
		out, _, _ = l.ctl("--socket", l.sock(i), "-o", "json", "status")
		var st api.Status
		if json.Unmarshal([]byte(out), &st) == nil && st.Cluster != nil {
			for _, m := range st.Cluster.Members {
				fmt.Fprintf(&b, "node %d: member %s %s\n", i, m.Name, m.State)
			}
		}
	}
	return b.String()
}

// A tiny writer of package cluster's wire format (codec.go).
type wire struct{ b []byte }

func (w *wire) u8(v byte)        { w.b = append(w.b, v) }
func (w *wire) uvarint(v uint64) { w.b = binary.AppendUvarint(w.b, v) }
func (w *wire) str(s string)     { w.uvarint(uint64(len(s))); w.b = append(w.b, s...) }
func (w *wire) addr(a netip.Addr) {
	w.u8(4)
	b := a.As4()
	w.b = append(w.b, b[:]...)
}
func (w *wire) zeros(n int) { w.b = append(w.b, make([]byte, n)...) }

// NetworkLike is the create a forged record claims.
type NetworkLike struct {
	clock        uint64
	node, subnet string
	vni          uint64
}

func forgedNetwork(name string, n NetworkLike) []byte {
	p := netip.MustParsePrefix(n.subnet)
	w := &wire{}
	w.u8(2) // codec version
	w.u8(1) // record
	w.u8(1) // network
	w.uvarint(n.clock)
	w.str(n.node)
	w.str(name)
	w.addr(p.Addr())
	w.u8(byte(p.Bits()))
	w.addr(p.Addr().Next())
	w.u8(24)
	w.uvarint(n.vni)
	w.u8(0)      // internal
	w.uvarint(0) // options
	w.u8(0)      // not deleted
	w.zeros(64)  // signature
	return w.b
}

func forgedLeave(node string) []byte {
	w := &wire{}
	w.u8(2)
	w.u8(6) // leave
	w.str(node)
	w.uvarint(uint64(time.Now().UnixNano()))
	w.zeros(64)
	return w.b
}

func forgedClaim(from string) []byte {
	w := &wire{}
	w.u8(2)
	w.u8(2) // request
	w.uvarint(1)
	w.str(from)
	w.u8(1) // claim
	w.u8(2) // an address
	w.uvarint(1)
	w.str(from)
	w.addr(netip.MustParseAddr("10.231.9.9"))
	w.u8(32)
	w.str("x")
	w.zeros(64)
	return w.b
}

// sealMemberlist encrypts a packet as memberlist does (AES-GCM, version 1:
// [1][nonce][sealed], no label).
func sealMemberlist(t *testing.T, key, plain []byte) []byte {
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		t.Fatal(err)
	}
	out := append([]byte{1}, nonce...)
	return gcm.Seal(out, nonce, plain, nil)
}
