package lab_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// tagServer answers every TCP connection on port 7002 with argv[1].
const tagServer = `
import socket, sys
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 7002)); t.listen(16)
while True:
    c, _ = t.accept(); c.sendall(sys.argv[1].encode()); c.close()
`

// tagClient prints what the server at argv[1]:7002 answers.
const tagClient = `
import socket, sys
c = socket.create_connection((sys.argv[1], 7002), timeout=5)
got = b""
while True:
    d = c.recv(100)
    if not d: break
    got += d
print(got.decode())
`

// conflictLog is the line the agent that lost an address conflict logs.
const conflictLog = "overlay address conflict lost to another node"

// TestPartitionAddressCollision: n3 is cut off from n1 and n2 (nftables
// drops on its underlay link, so no netem is needed); while partitioned a
// sandbox with the same static address is started on n1 and on n3. After
// the heal exactly one of them owns the address: n2 forwards it to that
// node and its traffic reaches that sandbox, and the other node says it
// lost the conflict in its status, in fabric_overlay_address_conflicts
// and in one log line.
func TestPartitionAddressCollision(t *testing.T) {
	l := newTestLab(t)
	l.up(3, "kernel")
	l.on(1, "network", "create", "-d", "overlay", "--subnet", "10.79.0.0/16", "ov")
	l.waitNetworkOn(t, "ov", 60*time.Second, 2, 3)
	client := l.name + "c2"
	l.sandboxIP(2, client, "--network", "ov", "--", "sleep", "600")

	l.partition(t, 3)
	netnstest.Until(t, 60*time.Second, "n1 declares n3 failed", l.memberState(1, l.netns(3), "failed"))
	const ip = "10.79.3.33"
	sb := l.collidingSandboxes(t, "ov", ip)

	l.heal(3)
	netnstest.Until(t, 60*time.Second, "n3 alive on n1 after the heal", l.memberState(1, l.netns(3), "alive"))
	netnstest.Until(t, 60*time.Second, "n1 alive on n3 after the heal", l.memberState(3, l.netns(1), "alive"))

	l.checkCollisionResolved(t, ip, sb, client)
}

// collidingSandboxes waits until n3, cut off, sees n1 and n2 failed, and
// starts a sandbox with address ip on network on n1 and on n3 (each
// answering its name on TCP port 7002); it returns their names by node.
func (l *testLab) collidingSandboxes(t *testing.T, network, ip string) map[int]string {
	t.Helper()
	netnstest.Until(t, 60*time.Second, "n3 declares n1 failed", l.memberState(3, l.netns(1), "failed"))
	netnstest.Until(t, 60*time.Second, "n3 declares n2 failed", l.memberState(3, l.netns(2), "failed"))
	sb := map[int]string{1: l.name + "s1", 3: l.name + "s3"}
	for _, i := range []int{1, 3} {
		// Not l.sandboxIP: this runs in the chaos test's subtest, and
		// failures must end t, not the lab's test.
		if _, errOut, code := l.ctl("--socket", l.sock(i), "run", "-d", "--name", sb[i], "--network", network, "--ip", ip,
			"--", "python3", "-c", tagServer, sb[i]); code != 0 {
			t.Fatalf("run %s on n%d with --ip %s: exit %d: %s", sb[i], i, ip, code, errOut)
		}
		if got := l.sandboxAddr(i, sb[i]); got != ip {
			t.Fatalf("n%d gave %s the address %q, want %s", i, sb[i], got, ip)
		}
	}
	return sb
}

// checkCollisionResolved: after the heal, of the two sandboxes in sb (by
// node) that were given ip on both sides of a partition exactly one keeps
// it: the third node forwards ip to its node and client's traffic (from
// the third node) reaches it; the other node
// reports the lost conflict in its status, its metrics and one log line,
// until its sandbox is removed.
func (l *testLab) checkCollisionResolved(t *testing.T, ip string, sb map[int]string, client string) {
	t.Helper()
	var pair []int
	for i := range sb {
		pair = append(pair, i)
	}
	slices.Sort(pair)
	third := 6 - pair[0] - pair[1] // the node of client
	loser, winner := l.conflictLoser(t, ip, sb, pair)
	t.Logf("n%d kept %s, n%d lost it", winner, ip, loser)
	l.checkForwardedToWinner(t, ip, third, winner, client, sb[winner])
	l.checkConflictReported(t, loser, winner)

	// Removing the loser's sandbox ends the conflict.
	if _, errOut, code := l.ctl("--socket", l.sock(loser), "sandbox", "rm", sb[loser]); code != 0 {
		t.Fatalf("sandbox rm %s on n%d: exit %d: %s", sb[loser], loser, code, errOut)
	}
	netnstest.Until(t, 60*time.Second, "the conflict is over after the loser's sandbox is removed", func() error {
		if v := l.metric(loser, conflictSeries); v != 0 {
			return fmt.Errorf("%s = %v", conflictSeries, v)
		}
		st, err := l.nodeStatus(loser)
		if err != nil {
			return err
		}
		if w := conflictWarning(st); w != "" {
			return fmt.Errorf("still warned: %s", w)
		}
		return nil
	})
	if n := l.logCount(t, loser, conflictLog); n != 1 {
		t.Errorf("n%d logged %q %d times in all, want 1", loser, conflictLog, n)
	}
}

// conflictSeries is the conflict gauge of the network both collision
// tests call ov.
const conflictSeries = `fabric_overlay_address_conflicts{network="ov"}`

// conflictWarning is the first of st's warnings about an address
// conflict, "" if none.
func conflictWarning(st api.Status) string {
	for _, w := range st.Warnings {
		if strings.Contains(w, "address conflict") {
			return w
		}
	}
	return ""
}

// conflictLoser waits until exactly one node of pair reports that its
// sandbox (sb) lost the conflict over ip, and returns it and the other.
func (l *testLab) conflictLoser(t *testing.T, ip string, sb map[int]string, pair []int) (loser, winner int) {
	t.Helper()
	netnstest.Until(t, 60*time.Second, "one node reports the lost address conflict", func() error {
		var lost []int
		for _, i := range pair {
			st, err := l.nodeStatus(i)
			if err != nil {
				return err
			}
			for _, w := range st.Warnings {
				if strings.Contains(w, "lost the address conflict") && strings.Contains(w, ip) && strings.Contains(w, sb[i]) {
					lost = append(lost, i)
				}
			}
		}
		if len(lost) != 1 {
			return fmt.Errorf("nodes reporting a lost conflict: %v", lost)
		}
		loser, winner = lost[0], pair[0]+pair[1]-lost[0]
		return nil
	})
	return loser, winner
}

// checkForwardedToWinner: the third node forwards ip to the winner, and
// client's traffic there is answered by the winner's sandbox.
func (l *testLab) checkForwardedToWinner(t *testing.T, ip string, third, winner int, client, winnerSandbox string) {
	t.Helper()
	netnstest.Until(t, 60*time.Second, fmt.Sprintf("n%d forwards the address to the winner", third), func() error {
		n, ok := l.network(third, "ov")
		if !ok {
			return fmt.Errorf("n%d has no network ov", third)
		}
		for _, r := range n.Remotes {
			if r.IP == ip {
				if r.Node != l.ip(winner) {
					return fmt.Errorf("n%d forwards %s to %s, want n%d (%s)", third, ip, r.Node, winner, l.ip(winner))
				}
				return nil
			}
		}
		return fmt.Errorf("n%d has no remote for %s: %+v", third, ip, n.Remotes)
	})
	netnstest.Until(t, 60*time.Second, "the third node's traffic to the address reaches the winner", func() error {
		out, err := inSandbox(client, "python3", "-c", tagClient, ip)
		if err != nil || strings.TrimSpace(out) != winnerSandbox {
			return fmt.Errorf("answer %q (%v), want %s", out, err, winnerSandbox)
		}
		return nil
	})
}

// checkConflictReported: the loser reports the conflict in its metrics and
// one log line (counted again at the end, after many more syncs, so not
// one per sync); the winner is not told anything.
func (l *testLab) checkConflictReported(t *testing.T, loser, winner int) {
	t.Helper()
	if st, err := l.nodeStatus(winner); err != nil {
		t.Fatal(err)
	} else if w := conflictWarning(st); w != "" {
		t.Errorf("winner n%d reports a conflict: %s", winner, w)
	}
	if v := l.metric(loser, conflictSeries); v != 1 {
		t.Errorf("n%d (loser): %s = %v, want 1", loser, conflictSeries, v)
	}
	if v := l.metric(winner, conflictSeries); v != 0 {
		t.Errorf("n%d (winner): %s = %v, want 0", winner, conflictSeries, v)
	}
	netnstest.Until(t, 30*time.Second, "the loser has logged the conflict", func() error {
		if n := l.logCount(t, loser, conflictLog); n != 1 {
			return fmt.Errorf("n%d logged %q %d times, want 1", loser, conflictLog, n)
		}
		return nil
	})
	if n := l.logCount(t, winner, conflictLog); n != 0 {
		t.Errorf("winner n%d logged %q %d times", winner, conflictLog, n)
	}
}

// partition cuts node i off the underlay with nftables drop rules on its
// eth0 in its own namespace (removed by heal or at the test's end).
func (l *testLab) partition(t *testing.T, i int) {
	t.Helper()
	rules := "table inet fabpart {\n" +
		"  chain pin { type filter hook input priority -300; policy accept; iifname \"eth0\" drop; }\n" +
		"  chain pout { type filter hook output priority -300; policy accept; oifname \"eth0\" drop; }\n" +
		"  chain pfwd { type filter hook forward priority -300; policy accept; iifname \"eth0\" drop; oifname \"eth0\" drop; }\n" +
		"}\n"
	f := filepath.Join(t.TempDir(), "partition.nft")
	if err := os.WriteFile(f, []byte(rules), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("skipping: needs nft (nftables) to cut the underlay")
	}
	if err := l.inNode(i, "nft", "-f", f); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.heal(i) })
}

// heal removes partition's rules from node i.
func (l *testLab) heal(i int) {
	_ = l.inNode(i, "nft", "delete", "table", "inet", "fabpart")
}

// sandboxAddr is the address of sandbox sb on node i ("" if it has none).
func (l *testLab) sandboxAddr(i int, sb string) string {
	out, _, _ := l.ctl("--socket", l.sock(i), "sandbox", "inspect", sb)
	var sbs []api.Sandbox
	if json.Unmarshal([]byte(out), &sbs) != nil || len(sbs) != 1 || len(sbs[0].Endpoints) == 0 {
		return ""
	}
	return strings.Split(sbs[0].Endpoints[0].IP, "/")[0]
}

// nodeStatus is node i's fabricctl status (which exits 1 when degraded).
func (l *testLab) nodeStatus(i int) (api.Status, error) {
	out, _, code := l.ctl("--socket", l.sock(i), "-o", "json", "status")
	var st api.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil || code > 1 {
		return st, fmt.Errorf("status of n%d: exit %d: %v", i, code, err)
	}
	return st, nil
}

// logCount counts the lines of node i's agent log that contain s.
func (l *testLab) logCount(t *testing.T, i int, s string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(l.dir(), fmt.Sprintf("n%d", i), "fabricd.log"))
	if err != nil {
		t.Fatalf("log of n%d: %v", i, err)
	}
	return strings.Count(string(b), s)
}

// TestPartitionBlockCollision: the same without --ip. The overlay has two
// blocks; n1 holds one, and while n3 is cut off n2 and n3 each lease the
// other one and hand out its first address. After the heal one lease wins
// and the duplicate dynamic address is resolved like a static one.
func TestPartitionBlockCollision(t *testing.T) {
	l := newTestLab(t)
	l.up(3, "kernel")
	l.on(1, "network", "create", "-d", "overlay", "--subnet", "10.80.0.0/23", "-o", "block_bits=24", "ov")
	l.waitNetworkOn(t, "ov", 60*time.Second, 2, 3)
	client := l.name + "c1"
	cip := l.sandboxIP(1, client, "--network", "ov", "--", "sleep", "600")
	// n3 has heard of n1's block (the endpoint in it) before the cut.
	netnstest.Until(t, 60*time.Second, "n3 knows n1's endpoint", func() error {
		if n, ok := l.network(3, "ov"); !ok || !hasRemoteIP(n, cip) {
			return fmt.Errorf("n3 has no remote %s", cip)
		}
		return nil
	})

	l.partition(t, 3)
	netnstest.Until(t, 60*time.Second, "n1 declares n3 failed", l.memberState(1, l.netns(3), "failed"))
	netnstest.Until(t, 60*time.Second, "n3 declares n1 failed", l.memberState(3, l.netns(1), "failed"))
	netnstest.Until(t, 60*time.Second, "n3 declares n2 failed", l.memberState(3, l.netns(2), "failed"))
	sb := map[int]string{2: l.name + "s2", 3: l.name + "s3"}
	ip := map[int]string{}
	for _, i := range []int{2, 3} {
		ip[i] = l.sandboxIP(i, sb[i], "--network", "ov", "--", "python3", "-c", tagServer, sb[i])
	}
	if ip[2] != ip[3] {
		t.Fatalf("n2 and n3 handed out %s and %s while partitioned; the test needs one address on both", ip[2], ip[3])
	}

	l.heal(3)
	netnstest.Until(t, 60*time.Second, "n3 alive on n1 after the heal", l.memberState(1, l.netns(3), "alive"))
	netnstest.Until(t, 60*time.Second, "n2 alive on n3 after the heal", l.memberState(3, l.netns(2), "alive"))
	l.checkCollisionResolved(t, ip[2], sb, client)
}
