package lab_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns/kfeat"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// sinkServer receives one TCP stream per connection on port 7001 and
// answers with the SHA-256 of what it got once the sender shuts down.
const sinkServer = `
import socket, threading, hashlib
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 7001)); t.listen(16)
def conn(c):
    h = hashlib.sha256()
    while True:
        d = c.recv(65536)
        if not d: break
        h.update(d)
    c.sendall(h.hexdigest().encode()); c.close()
while True:
    c, _ = t.accept(); threading.Thread(target=conn, args=(c,), daemon=True).start()
`

// sendClient sends argv[3] bytes of seeded pseudo-random data to
// argv[1]:argv[2] and exits 0 only if the receiver's SHA-256 matches.
const sendClient = `
import socket, sys, hashlib, random
ip, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = random.Random(7).randbytes(size)
c = socket.create_connection((ip, port), timeout=60)
c.sendall(data); c.shutdown(socket.SHUT_WR)
got = b""
while True:
    d = c.recv(100)
    if not d: break
    got += d
want = hashlib.sha256(data).hexdigest()
if got.decode() != want: sys.exit("checksum: got %r want %s" % (got, want))
print("ok", size)
`

// TestChaosOnTheUnderlay: netem on the lab's underlay links. Under 5% loss
// and 50±10 ms delay with reordering an overlay TCP transfer arrives
// intact, names resolve and no member is declared failed; a node cut off
// for 30 s is declared failed and comes back after the heal; a link that
// flaps every second does not break a transfer; the same static address
// granted on both sides of the partition ends with one owner and the
// loser told; the agents' goroutines and memory stay bounded through all
// of it.
func TestChaosOnTheUnderlay(t *testing.T) {
	kfeat.Need(t, kfeat.Netem)
	l := newTestLab(t)
	l.up(3, "kernel")
	l.on(1, "network", "create", "-d", "overlay", "--subnet", "10.78.0.0/16", "ov")
	l.waitNetworkOn(t, "ov", 60*time.Second, 2, 3)
	o := &overlaySandboxes{l: l}
	sb, ip := &o.sb, &o.ip
	for i := 1; i <= 3; i++ {
		sb[i] = fmt.Sprintf("%sc%d", l.name, i)
		ip[i] = l.sandboxIP(i, sb[i], "--network", "ov", "--", "python3", "-c", sinkServer)
	}
	for _, j := range []int{2, 3} {
		netnstest.Until(t, 60*time.Second, fmt.Sprintf("transfer s1 -> s%d", j), transfer(sb[1], ip[j], 1000))
	}
	base := l.agentUsage(t)

	t.Run("loss and delay", func(t *testing.T) { testLossAndDelay(t, o) })

	t.Run("partition and heal", func(t *testing.T) { testPartitionAndHeal(t, o) })

	t.Run("flapping link", func(t *testing.T) { testFlappingLink(t, o) })

	after := l.agentUsage(t)
	for i := range base {
		t.Logf("n%d: goroutines %d -> %d, RSS %d -> %d KiB", i+1, base[i].goroutines, after[i].goroutines, base[i].rssKiB, after[i].rssKiB)
		if after[i].goroutines > 2*base[i].goroutines+50 {
			t.Errorf("n%d: goroutines grew from %d to %d", i+1, base[i].goroutines, after[i].goroutines)
		}
		if after[i].rssKiB > 2*base[i].rssKiB+64<<10 {
			t.Errorf("n%d: RSS grew from %d to %d KiB", i+1, base[i].rssKiB, after[i].rssKiB)
		}
	}
}

// testLossAndDelay: with 5% loss and 50±10 ms delay with reordering on every
// node, a 1 MiB transfer arrives, names resolve and no member is declared
// failed.
func testLossAndDelay(t *testing.T, o *overlaySandboxes) {
	l, sb, ip := o.l, o.sb, o.ip
	for i := 1; i <= 3; i++ {
		l.netem(t, i, "loss", "5%", "delay", "50ms", "10ms", "reorder", "25%", "50%")
	}
	failed := l.watchFailed(t, 1)
	netnstest.Until(t, 120*time.Second, "1 MiB s1 -> s2 under loss", transfer(sb[1], ip[2], 1<<20))
	netnstest.Until(t, 30*time.Second, "s1 resolves s3 under loss", func() error {
		out, err := inSandbox(sb[1], "getent", "hosts", sb[3])
		if err != nil || !strings.HasPrefix(out, ip[3]+" ") {
			return fmt.Errorf("getent hosts %s: %v %q", sb[3], err, out)
		}
		return nil
	})
	if f := failed(); len(f) > 0 {
		t.Errorf("members declared failed under loss alone: %v", f)
	}
	for i := 1; i <= 3; i++ {
		l.netem(t, i)
	}
}

// testPartitionAndHeal: n3 cut off for 30 s is declared failed and comes
// back after the heal; the static address both sides granted meanwhile ends
// with one owner.
func testPartitionAndHeal(t *testing.T, o *overlaySandboxes) {
	l, sb, ip := o.l, o.sb, o.ip
	l.netem(t, 3, "loss", "100%")
	t0 := time.Now()
	took := netnstest.Until(t, 30*time.Second, "n1 declares cut-off n3 failed", l.memberState(1, l.netns(3), "failed"))
	t.Logf("n3 failed on n1 after %v", took.Round(time.Millisecond))
	// Both sides grant the same static address meanwhile. netem on
	// n3's eth0 drops only what n3 sends, and n1 still gossips to the
	// dead for a while: cut what n3 receives too, or it hears n1's claim.
	l.partition(t, 3)
	const dup = "10.78.9.9"
	dupSb := l.collidingSandboxes(t, "ov", dup)
	if rest := 30*time.Second - time.Since(t0); rest > 0 {
		time.Sleep(rest) // the partition lasts 30 s
	}
	l.netem(t, 3)
	l.heal(3)
	took = netnstest.Until(t, 60*time.Second, "n3 alive again on n1 after the heal", l.memberState(1, l.netns(3), "alive"))
	t.Logf("n3 alive on n1 %v after the heal", took.Round(time.Millisecond))
	netnstest.Until(t, 60*time.Second, "transfer s1 -> s3 after the heal", transfer(sb[1], ip[3], 64<<10))
	netnstest.Until(t, 60*time.Second, "n1 alive on n3 after the heal", l.memberState(3, l.netns(1), "alive"))
	l.checkCollisionResolved(t, dup, dupSb, sb[2])
}

// testFlappingLink: a link of n2 that flaps every second does not break a
// transfer, and n2 is alive again after.
func testFlappingLink(t *testing.T, o *overlaySandboxes) {
	l, sb, ip := o.l, o.sb, o.ip
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 0; n < 60; n++ { // at most a minute
			select {
			case <-stop:
				_ = l.inNode(2, "ip", "link", "set", "eth0", "up")
				return
			case <-time.After(time.Second):
			}
			state := []string{"down", "up"}[n%2]
			_ = l.inNode(2, "ip", "link", "set", "eth0", state)
		}
		_ = l.inNode(2, "ip", "link", "set", "eth0", "up")
	}()
	err := transfer(sb[1], ip[2], 1<<20)()
	close(stop)
	wg.Wait()
	if err != nil {
		t.Errorf("transfer across a flapping link: %v", err)
	}
	netnstest.Until(t, 60*time.Second, "n2 alive on n1 after the flapping", l.memberState(1, l.netns(2), "alive"))
}

// transfer sends size bytes from sandbox from to ip:7001 and checks the
// receiver's checksum.
func transfer(from, ip string, size int) func() error {
	return func() error {
		out, err := inSandbox(from, "python3", "-c", sendClient, ip, "7001", strconv.Itoa(size))
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	}
}

// netem sets node i's underlay qdisc to netem with args, or removes it
// when there are none.
func (l *testLab) netem(t *testing.T, i int, args ...string) {
	t.Helper()
	if len(args) == 0 {
		_ = l.inNode(i, "tc", "qdisc", "del", "dev", "eth0", "root")
		return
	}
	if err := l.inNode(i, append([]string{"tc", "qdisc", "replace", "dev", "eth0", "root", "netem"}, args...)...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.inNode(i, "tc", "qdisc", "del", "dev", "eth0", "root") })
}

// members is node i's view of the cluster.
func (l *testLab) members(i int) ([]api.Member, error) {
	// status exits 1 when something is unhealthy (a failed member, an
	// unanswered underlay probe) and still prints the whole status.
	st, err := l.nodeStatus(i)
	if err != nil {
		return nil, err
	}
	if st.Cluster == nil {
		return nil, fmt.Errorf("status of n%d: no cluster section", i)
	}
	return st.Cluster.Members, nil
}

// memberState checks that node i sees member node (a lab node's name is
// its namespace's) in state.
func (l *testLab) memberState(i int, node, state string) func() error {
	return func() error {
		ms, err := l.members(i)
		if err != nil {
			return err
		}
		for _, m := range ms {
			if m.Name == node {
				if m.State != state {
					return fmt.Errorf("n%d sees %s %s", i, m.Name, m.State)
				}
				return nil
			}
		}
		return fmt.Errorf("n%d does not list %s: %+v", i, node, ms)
	}
}

// watchFailed samples node i's members every second until the test ends
// and returns a function that lists the members it ever saw not alive.
func (l *testLab) watchFailed(t *testing.T, i int) func() []string {
	var mu sync.Mutex
	seen := map[string]bool{}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for n := 0; n < 600; n++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
			}
			ms, err := l.members(i)
			if err != nil {
				continue
			}
			mu.Lock()
			for _, m := range ms {
				if m.State != "alive" {
					seen[m.Name+" "+m.State] = true
				}
			}
			mu.Unlock()
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		var out []string
		for k := range seen {
			out = append(out, k)
		}
		return out
	}
}

type usage struct{ goroutines, rssKiB int }

// agentUsage reads each agent's goroutine count (from its metrics) and
// resident memory (from /proc).
func (l *testLab) agentUsage(t *testing.T) []usage {
	t.Helper()
	st, _ := l.status()
	var out []usage
	for i, n := range st.Nodes {
		var u usage
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", n.PID)); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
					u.rssKiB, _ = strconv.Atoi(strings.Fields(v)[0])
				}
			}
		}
		if n.Metrics.IsValid() {
			outb, err := nodeOutput(l.netns(i+1), "python3", "-c",
				"import urllib.request,sys;print(urllib.request.urlopen(sys.argv[1],timeout=10).read().decode())",
				"http://"+n.Metrics.String()+"/metrics")
			if err == nil {
				for _, line := range strings.Split(outb, "\n") {
					if v, ok := strings.CutPrefix(line, "go_goroutines "); ok {
						u.goroutines, _ = strconv.Atoi(strings.TrimSpace(v))
					}
				}
			}
		}
		if u.goroutines == 0 || u.rssKiB == 0 {
			t.Fatalf("n%d: could not read goroutines (%d) and RSS (%d)", i+1, u.goroutines, u.rssKiB)
		}
		out = append(out, u)
	}
	return out
}

// nodeOutput runs argv in a node's network namespace (bounded by 20 s)
// and returns its output.
func nodeOutput(netns string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", append([]string{"--net=/var/run/netns/" + netns}, argv...)...).Output()
	return string(out), err
}
