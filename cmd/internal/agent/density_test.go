package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
	"github.com/miekg/dns"
)

// TestThousandsOfSandboxes creates 2,000 sandboxes with a command each on
// one agent, lists them, resolves a name from inside every one of them
// through its embedded DNS, and removes them all, and checks that the
// agent's OS threads do not grow with the sandbox count (a thread per
// command, or per resolver, would add 2,000). The datapath is the fake
// one: namespaces, resolvers and commands are real, endpoints are not
// wired. It takes about a minute; -short skips it, FABRIC_DENSITY_N
// changes the count.
func TestThousandsOfSandboxes(t *testing.T) {
	netnstest.RequireRoot(t)
	if testing.Short() {
		t.Skip("-short: 2,000 sandboxes take about a minute")
	}
	n := 2000
	if v := os.Getenv("FABRIC_DENSITY_N"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 20 {
			t.Fatalf("FABRIC_DENSITY_N=%q: want a number ≥ 20", v)
		}
	}
	started := time.Now()
	dir := t.TempDir()
	a := newKernelTestAgent(t, dir, newFake())
	defer a.Close()
	ctx := context.Background()
	names := make([]string, n)
	ips := make([]netip.Addr, n)
	var warm int
	for i := range n {
		names[i] = sandboxName(t, "dn")
		sb, err := a.CreateSandbox(ctx, api.SandboxCreate{Name: names[i], Command: []string{"sleep", "600"}})
		if err != nil {
			t.Fatalf("sandbox %d: %v", i, err)
		}
		t.Cleanup(func() { _ = a.RemoveSandbox(context.Background(), sb.Name) })
		if sb.State != api.StateRunning || len(sb.Endpoints) != 1 {
			t.Fatalf("sandbox %d: %+v", i, sb)
		}
		ips[i] = netip.MustParsePrefix(sb.Endpoints[0].IP).Addr()
		if i == 19 {
			warm = osThreads(t)
		}
		if time.Since(started) > 4*time.Minute {
			t.Fatalf("only %d sandboxes made in 4 minutes", i+1)
		}
	}
	created := time.Since(started)
	if got := osThreads(t); got > warm+8 {
		t.Errorf("%d OS threads with %d sandboxes, %d with 20: want no thread per sandbox", got, n, warm)
	}
	list := a.Sandboxes()
	running := 0
	for _, sb := range list {
		if sb.State == api.StateRunning && sb.PID > 0 && alive(sb.PID, 0) {
			running++
		}
	}
	if running != n {
		t.Fatalf("%d of %d sandboxes listed as running", running, n)
	}
	paths := map[string]string{}
	for _, sb := range list {
		paths[sb.Name] = sb.NetNS
	}
	for i := range n {
		peer := (i + 1) % n
		got, err := resolveIn(paths[names[i]], names[peer])
		if err != nil || got != ips[peer] {
			t.Fatalf("sandbox %s resolving %s: %v %v, want %v", names[i], names[peer], got, err, ips[peer])
		}
	}
	resolved := time.Since(started)
	if got := osThreads(t); got > warm+8 {
		t.Errorf("%d OS threads after %d resolutions, %d with 20 sandboxes", got, n, warm)
	}
	removeAllChecked(t, a, names, list, warm)
	t.Logf("%d sandboxes: created in %v, resolved by %v, removed by %v; %d OS threads (%d at 20 sandboxes)",
		n, created.Round(time.Millisecond), resolved.Round(time.Millisecond), time.Since(started).Round(time.Millisecond), osThreads(t), warm)
}

// removeAllChecked removes the sandboxes names (listed as list) and checks
// that their commands, records and resolvers are gone, without OS threads
// left over (warm: the count at 20 sandboxes).
func removeAllChecked(t *testing.T, a *Agent, names []string, list []api.Sandbox, warm int) {
	t.Helper()
	ctx, n := context.Background(), len(names)
	// With start times: pid_max may be 32768, and with thousands of
	// commands a PID is soon another process's.
	type proc struct {
		pid   int
		start uint64
	}
	procs := make([]proc, 0, n)
	for _, sb := range list {
		start, err := processStart(sb.PID)
		if err != nil {
			t.Fatalf("command %d of sandbox %s: %v", sb.PID, sb.Name, err)
		}
		procs = append(procs, proc{sb.PID, start})
	}
	for _, name := range names {
		if err := a.RemoveSandbox(ctx, name); err != nil {
			t.Fatalf("remove %s: %v", name, err)
		}
	}
	for _, p := range procs {
		if alive(p.pid, p.start) {
			t.Fatalf("command %d runs after its sandbox was removed", p.pid)
		}
	}
	if left := len(a.Sandboxes()); left != 0 {
		t.Fatalf("%d sandboxes left", left)
	}
	if st := a.dns.Stats(); st.Attached != 0 {
		t.Fatalf("%d resolvers left", st.Attached)
	}
	if got := osThreads(t); got > warm+8 {
		t.Errorf("%d OS threads after removing %d sandboxes, %d with 20", got, n, warm)
	}
}

// resolveIn asks the embedded DNS of the namespace at nsPath for name's
// A record.
func resolveIn(nsPath, name string) (netip.Addr, error) {
	var got netip.Addr
	err := netns.Do(nsPath, func() error {
		c, err := net.Dial("udp4", "127.0.0.11:53") // the socket is made in the sandbox's namespace
		if err != nil {
			return err
		}
		defer c.Close()
		m := new(dns.Msg).SetQuestion(dns.Fqdn(name), dns.TypeA)
		var r *dns.Msg
		for try := range 3 {
			client := dns.Client{Timeout: time.Duration(1+try) * time.Second}
			if r, _, err = client.ExchangeWithConn(m, &dns.Conn{Conn: c}); err == nil {
				break
			}
		}
		if err != nil {
			return err
		}
		for _, rr := range r.Answer {
			if a, ok := rr.(*dns.A); ok {
				got, _ = netip.AddrFromSlice(a.A.To4())
				return nil
			}
		}
		return fmt.Errorf("no A record in %v", r)
	})
	return got, err
}
