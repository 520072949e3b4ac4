package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fabricnet/fabric/cluster"
	"github.com/fabricnet/fabric/cmd/internal/agent/agentstate"
	"github.com/fabricnet/fabric/cmd/internal/dns"
	"github.com/fabricnet/fabric/cmd/internal/ipam"
	"github.com/fabricnet/fabric/cmd/internal/store"
	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/metrics"
	"golang.org/x/sys/unix"
)

// Version is the agent's version, set at build time.
var Version = "dev"

// DefaultNetworkName is the network sandboxes join when none is given.
const DefaultNetworkName = "bridge"

// DefaultBridge is the default network's bridge device.
const DefaultBridge = "fabric0"

// parentCheckInterval is how often macvlan/ipvlan parents are checked.
const parentCheckInterval = time.Second

// Options configure an Agent.
type Options struct {
	StateDir string
	Socket   string
	NodeName string
	// HostNetNS is the namespace the agent programs and runs host-mode
	// commands in; "" is the agent's own (the normal case).
	HostNetNS string
	// DefaultSubnet fixes the default network's subnet; invalid means pick
	// the first free default pool.
	DefaultSubnet    netip.Prefix
	NoDefaultNetwork bool
	// DNS configures the embedded DNS server; NoDNS turns it off.
	DNS   dns.Config
	NoDNS bool
	// NetNSPrefix goes before a sandbox's name in its namespace's name
	// (/var/run/netns/PREFIXNAME): several agents on one machine (a lab)
	// then have sandbox names of their own. "" keeps `ip netns exec NAME`.
	NetNSPrefix string
	Datapath    datapath.Datapath
	// Host answers the core's questions to the host (routes, links,
	// sandbox namespaces); nil asks the kernel (in HostNetNS).
	Host Host
	// Cluster, if set, makes the host part of a fabric: overlay networks,
	// leases and endpoint records come from it. The caller runs it
	// (Cluster.Run) and calls RunCluster; nil is a single-host fabric.
	Cluster *cluster.Cluster
	// Tunnel is where overlay traffic leaves and arrives (Local is the
	// address other nodes send to; its interface's MTU sets overlay MTUs).
	Tunnel datapath.Tunnel
	// APIMetrics, if set, counts API requests by route and code.
	APIMetrics *metrics.APIMetrics
	Log        *slog.Logger
}

// Agent is one host's fabric agent.
type Agent struct {
	opts    Options
	log     *slog.Logger
	dp      datapath.Datapath
	host    Host
	store   *store.Store
	started time.Time

	mu        sync.Mutex             // serialises changes (core.go)
	view      sync.RWMutex           // guards the four maps below for status and metrics (core.go)
	networks  map[string]*networkRec // by ID
	sandboxes map[string]*sandboxRec // by name
	endpoints map[string]*endpointRec
	// bySandbox indexes endpoints by sandbox name, then ID (a create
	// looks up its sandbox's endpoints several times; a walk over every
	// endpoint made it cost more the more endpoints existed).
	bySandbox map[string]map[string]*endpointRec
	// byHostIf indexes endpoints by host interface name, then ID (adopting
	// a runtime's veth checks no endpoint has it already).
	byHostIf map[string]map[string]*endpointRec
	// byAddr indexes endpoints by address, then ID (Docker's resolver
	// forwards each query to the shared listener, which names the asking
	// sandbox from the query's source address).
	byAddr    map[netip.Addr]map[string]*endpointRec
	pools     map[string]*ipam.Pool // by network ID
	dns       *dns.Server
	hostPorts map[hostPortKey][]published // the sandboxes' published ports (putSandbox)
	names     *dnsRecords                 // the DNS table's records and problems (dnsrecords.go)
	// namesAddr is the shared resolver's address while ServeNamesAt
	// serves it; namesRouted says local routes to it may exist for ipvlan
	// L3/L3S sandboxes (namesroutes.go).
	namesAddr   netip.Addr
	namesRouted bool

	cl   *cluster.Cluster
	glue *clusterGlue // the agent's side of the cluster (clusterglue.go)

	procs        *processes
	makesBridges bool // the datapath has a Linux bridge per bridge network (bridgeless.go)
	wg           sync.WaitGroup
	health       *health // warnings, unhealthy networks, events (health.go)
}

// New opens the state store and builds the agent; Start reconciles.
func New(opts Options) (*Agent, error) {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Datapath == nil {
		return nil, errors.New("agent needs a datapath")
	}
	if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir %s: %w", opts.StateDir, err)
	}
	st, err := store.Open(filepath.Join(opts.StateDir, agentstate.FileName),
		[]string{bucketNetworks, bucketSandboxes, bucketEndpoints, bucketCluster}, 2*time.Second)
	if err != nil {
		return nil, err
	}
	a := &Agent{
		opts: opts, log: opts.Log, dp: opts.Datapath, store: st, started: time.Now(),
		networks: map[string]*networkRec{}, sandboxes: map[string]*sandboxRec{}, hostPorts: map[hostPortKey][]published{},
		endpoints: map[string]*endpointRec{}, bySandbox: map[string]map[string]*endpointRec{},
		byHostIf: map[string]map[string]*endpointRec{}, byAddr: map[netip.Addr]map[string]*endpointRec{},
		pools:  map[string]*ipam.Pool{},
		health: newHealth(),
		cl:     opts.Cluster, glue: newClusterGlue(),
	}
	if !opts.NoDNS {
		if opts.DNS.Log == nil {
			opts.DNS.Log = opts.Log.With("part", "dns")
		}
		srv, err := dns.New(opts.DNS)
		if err != nil {
			st.Close()
			return nil, fmt.Errorf("embedded DNS: %w", err)
		}
		a.dns = srv
	}
	a.names = newDNSRecords(a.dns)
	a.host = opts.Host
	if a.host == nil {
		a.host = netlinkHost{opts.HostNetNS}
	}
	if a.procs, err = newProcesses(a, filepath.Join(opts.StateDir, "logs")); err != nil {
		if a.dns != nil {
			a.dns.Close()
		}
		st.Close()
		return nil, err
	}
	a.makesBridges = makesBridges(opts.Datapath)
	return a, nil
}

// Start loads the stored state and makes the kernel match it. It must run
// before Serve.
func (a *Agent) Start(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.load(); err != nil {
		return fmt.Errorf("load state: %w", err)
	}
	if err := a.restoreCluster(); err != nil {
		return err
	}
	t0 := time.Now()
	err := a.reconcile(ctx)
	a.health.recordReconcile(time.Since(t0), err)
	if err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	if !a.opts.NoDefaultNetwork {
		if err := a.ensureDefaultNetwork(ctx); err != nil {
			return fmt.Errorf("default network: %w", err)
		}
	}
	a.drainRemovalQueue(ctx)
	if a.cl != nil {
		a.publishAllLocked()
		a.syncClusterLocked(ctx)
		a.saveClusterLocked(true)
	}
	return nil
}

// Serve listens on the unix socket and serves the API until ctx ends.
func (a *Agent) Serve(ctx context.Context) error {
	ln, err := listenUnix(a.opts.Socket)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: a.handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.watchParents(watchCtx, parentCheckInterval)
	}()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.watchRemovalQueue(watchCtx, removalQueueInterval)
	}()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.repairDatapath(watchCtx, datapath.RepairInterval)
	}()
	a.log.Info("fabricd serving", "socket", a.opts.Socket, "datapath", a.dp.Status(ctx).Name, "version", Version)
	select {
	case <-ctx.Done():
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shut)
		os.Remove(a.opts.Socket)
		return nil
	case err := <-errc:
		return fmt.Errorf("serve api: %w", err)
	}
}

// Close stops watchers and releases the store. Sandboxes, their commands and
// the kernel state stay: a restarted agent picks them up again.
func (a *Agent) Close() error {
	a.procs.close()
	a.wg.Wait()
	var dnsErr error
	if a.dns != nil {
		dnsErr = a.dns.Close()
	}
	return errors.Join(dnsErr, a.dp.Close(), a.store.Close())
}

// listenUnix listens on path, a socket of mode 0600 from its creation, replacing a stale socket but
// refusing to steal one another agent is serving.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket dir: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("socket %s: another fabricd is already serving it", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	// The socket file is born 0600: with a chmod after listen, a local
	// user could connect in between. The umask is the process's; nothing
	// else of the agent creates files while it starts serving.
	old := unix.Umask(0o177)
	ln, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if testHookListened != nil {
		testHookListened(path)
	}
	return ln, nil
}

// testHookListened, if set, runs right after the socket is bound.
var testHookListened func(path string)
