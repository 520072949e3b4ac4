// Command fabricd is fabric's per-host agent: it keeps the host's networks,
// sandboxes and endpoints, programs the kernel to match them, and serves
// fabricctl on a unix socket.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	cebpf "github.com/cilium/ebpf"

	"github.com/fabricnet/fabric/cluster"
	"github.com/fabricnet/fabric/cluster/gossipkey"
	"github.com/fabricnet/fabric/cmd/internal/agent"
	"github.com/fabricnet/fabric/cmd/internal/config"
	"github.com/fabricnet/fabric/cmd/internal/dns"
	"github.com/fabricnet/fabric/cmd/internal/dockerplugin"
	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/ebpf"
	"github.com/fabricnet/fabric/datapath/kernel"
	"github.com/fabricnet/fabric/metrics"
	"github.com/spf13/pflag"
)

var version = "dev"

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) > 0 && args[0] == "reset" {
		return resetMain(args[1:], os.Stdout, os.Stderr)
	}
	fs := pflag.NewFlagSet("fabricd", pflag.ContinueOnError)
	fs.SortFlags = false
	config.RegisterFlags(fs)
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, `fabricd is fabric's agent: run one on every host (usually as the systemd
service fabricd.service). It creates the default "bridge" network, keeps the
networks, sandboxes and endpoints that fabricctl asks for, and programs the
kernel to match them again after any restart.

Usage: fabricd [flags]
       fabricd reset [--purge-state] [flags]   remove fabric's kernel state (agent stopped)

Every flag can also be set in the config file (same name, e.g. "state-dir:")
or as an environment variable (FABRIC_STATE_DIR); flags win over the
environment, which wins over the file.

Flags:
%s`, fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(os.Stderr, "fabricd: %v\n", err)
		return 2
	}
	if *showVersion {
		fmt.Println("fabricd", version)
		return 0
	}
	cfg, err := config.Load(fs)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fabricd: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.SlogLevel()}))
	if err := serve(cfg, log); err != nil {
		log.Error("fabricd stopped", "err", err)
		return 1
	}
	return 0
}

func serve(cfg config.Config, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	agent.Version = version

	var cl *cluster.Cluster
	var tunnel datapath.Tunnel
	if cfg.Clustered() {
		var err error
		cl, err = newCluster(cfg, log)
		if err != nil {
			return err
		}
		defer cl.Stop()
		tunnel = datapath.Tunnel{Local: cl.Addr().Addr(), Port: uint16(cfg.TunnelPort)}
	}
	dp, err := newDatapath(cfg, tunnel, log)
	if err != nil {
		return err
	}
	if cl != nil {
		meta := clusterMeta(cfg, tunnel)
		meta.Datapath = dp.Status(ctx).Name
		if err := cl.UpdateMeta(meta); err != nil {
			log.Warn("cannot announce node metadata", "err", err)
		}
	}
	apiMetrics := metrics.NewAPIMetrics()
	a, err := agent.New(agent.Options{
		StateDir: cfg.StateDir, Socket: cfg.Socket, NodeName: cfg.NodeName,
		DefaultSubnet: cfg.DefaultSubnetPrefix(), NoDefaultNetwork: cfg.NoDefaultNetwork,
		DNS: dns.Config{Upstreams: cfg.DNSUpstreams, TTL: cfg.DNSTTL}, NetNSPrefix: cfg.NetNSPrefix,
		Datapath: dp, Log: log, APIMetrics: apiMetrics,
		Cluster: cl, Tunnel: tunnel,
	})
	if err != nil {
		dp.Close()
		return err
	}
	defer a.Close()
	if err := a.Start(ctx); err != nil {
		return err
	}
	if cl != nil {
		go func() {
			if err := cl.Run(ctx); err != nil {
				log.Error("cluster stopped", "err", err)
			}
		}()
		go a.RunCluster(ctx)
	}
	if cfg.MetricsListen != "" {
		// Metrics are not worth losing the network over: a listener that
		// cannot open (address not up yet) is logged and reported.
		if ln, err := net.Listen("tcp", cfg.MetricsListen); err != nil {
			log.Error("no metrics: cannot listen (--metrics-listen; empty disables it)", "listen", cfg.MetricsListen, "err", err)
			a.Warn(fmt.Sprintf("metrics not served: listen %s: %v", cfg.MetricsListen, err))
		} else {
			reg := metrics.NewRegistry(version, dp.Status(ctx).Name, a.MetricsSources(apiMetrics))
			go func() {
				if err := metrics.Serve(ctx, ln, metrics.Handler(reg, log)); err != nil {
					log.Error("metrics server stopped", "err", err)
				}
			}()
			log.Info("metrics at /metrics", "listen", ln.Addr().String())
		}
	}
	if cfg.DockerPlugin != "" {
		done, err := serveDockerPlugin(ctx, cfg, a, log)
		if err != nil {
			return err
		}
		defer func() { <-done }() // before the agent closes
	}
	return a.Serve(ctx)
}

// serveDockerPlugin serves Docker's plugin API until ctx ends; done closes
// when it has stopped. Docker's API is found by DOCKER_HOST, as the docker
// CLI finds it.
func serveDockerPlugin(ctx context.Context, cfg config.Config, a *agent.Agent, log *slog.Logger) (<-chan struct{}, error) {
	p, err := dockerplugin.New(log.With("part", "docker-plugin"), a, dockerplugin.Options{
		Socket: cfg.DockerPlugin, StateFile: filepath.Join(cfg.StateDir, "docker-plugin.json"),
		DockerHost: os.Getenv("DOCKER_HOST"),
		IsNotFound: func(err error) bool { return errors.Is(err, agent.ErrNotFound) },
	})
	if err != nil {
		return nil, fmt.Errorf("docker plugin: %w", err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := p.Run(ctx); err != nil {
			log.Error("docker plugin stopped", "err", err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := a.ServeNamesAt(ctx, dockerplugin.DNSAddr); err != nil {
			log.Error("no names for Docker's resolver", "addr", dockerplugin.DNSAddr, "err", err)
			a.Warn(fmt.Sprintf("names for Docker's resolver not served at %s: %v", dockerplugin.DNSAddr, err))
		}
	}()
	go func() {
		wg.Wait()
		close(done)
	}()
	return done, nil
}

// newCluster starts gossip (listening, not yet joined: Run joins).
func newCluster(cfg config.Config, log *slog.Logger) (*cluster.Cluster, error) {
	var keys [][]byte
	if cfg.ClusterSecretFile != "" {
		var err error
		if keys, err = cluster.LoadKeyFile(cfg.ClusterSecretFile); err != nil {
			return nil, fmt.Errorf("--cluster-secret-file: %w", err)
		}
	}
	bind, err := cfg.GossipBind()
	if err != nil {
		return nil, fmt.Errorf("--cluster-bind: %w", err)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("--state-dir: %w", err)
	}
	identity, err := gossipkey.LoadOrCreateIdentity(filepath.Join(cfg.StateDir, "cluster-identity.key"))
	if err != nil {
		return nil, fmt.Errorf("cluster identity: %w", err)
	}
	if keys == nil && cfg.NeedsKey() {
		log.Warn("cluster gossip is neither encrypted nor authenticated (--cluster-insecure): anyone who reaches the gossip port can rewrite the cluster; make a key with `fabricctl cluster key generate FILE` and set --cluster-secret-file",
			"bind", bind)
	}
	cc := cluster.Config{
		NodeName: cfg.NodeName, BindAddr: bind.Addr().String(), BindPort: int(bind.Port()),
		Join: cfg.GossipSeeds(), SecretKeys: keys, NodeKey: identity, Logger: log.With("part", "cluster"),
		Meta: clusterMeta(cfg, datapath.Tunnel{}),
	}
	cl, err := cluster.New(cc)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	return cl, nil
}

func clusterMeta(cfg config.Config, t datapath.Tunnel) cluster.NodeMeta {
	return cluster.NodeMeta{Name: cfg.NodeName, Addr: t.Local, TunnelPort: uint16(cfg.TunnelPort), Version: version}
}

// guardPorts are the agent's own ports on the host, which the datapath
// keeps every sandbox from reaching: gossip (TCP and UDP), the tunnel
// (UDP) and metrics (TCP). The API is a unix socket, out of reach anyway.
func guardPorts(cfg config.Config) []datapath.HostPort {
	var out []datapath.HostPort
	if cfg.Clustered() {
		if bind, err := cfg.GossipBind(); err == nil && bind.Port() != 0 {
			out = append(out, datapath.HostPort{Proto: "tcp", Port: bind.Port()}, datapath.HostPort{Proto: "udp", Port: bind.Port()})
		}
	}
	if cfg.TunnelPort > 0 && cfg.TunnelPort < 1<<16 {
		out = append(out, datapath.HostPort{Proto: "udp", Port: uint16(cfg.TunnelPort)})
	}
	if _, port, err := net.SplitHostPort(cfg.MetricsListen); err == nil {
		if p, err := strconv.ParseUint(port, 10, 16); err == nil && p != 0 {
			out = append(out, datapath.HostPort{Proto: "tcp", Port: uint16(p)})
		}
	}
	return out
}

func newDatapath(cfg config.Config, tunnel datapath.Tunnel, log *slog.Logger) (datapath.Datapath, error) {
	guard := guardPorts(cfg)
	var viaShim []netip.Addr
	if cfg.DockerPlugin != "" {
		// Docker's resolver forwards from inside the container: on a
		// macvlan or ipvlan L2 network the query would go to the LAN's
		// router, not to this host.
		viaShim = []netip.Addr{dockerplugin.DNSAddr}
	}
	return chooseDatapath(log, cfg.Datapath,
		ebpf.Options{
			BPFRoot: cfg.BPFRoot, Uplink: cfg.Uplink, XDP: cfg.XDP, Tunnel: tunnel,
			GuardPorts: guard, ShimRoutes: viaShim, ConntrackMax: cfg.ConntrackMax, SockRedirect: cfg.SockRedirect,
		},
		kernel.Options{Tunnel: tunnel, GuardPorts: guard, ShimRoutes: viaShim})
}

// chooseDatapath makes the datapath mode asks for. auto falls back to the
// kernel datapath only when the eBPF one cannot run on this kernel
// (ebpf.ErrUnsupported), and says why in the log and in status; a program
// the verifier rejects (ebpf.ErrRejected, a bug of ours) or a wrong
// setting is an error, whatever the mode.
func chooseDatapath(log *slog.Logger, mode string, eopts ebpf.Options, kopts kernel.Options) (datapath.Datapath, error) {
	if mode != config.DatapathEBPF && mode != config.DatapathAuto {
		dp, err := kernel.New(log, kopts)
		if err != nil {
			return nil, fmt.Errorf("kernel datapath: %w", err)
		}
		return dp, nil
	}
	dp, err := ebpf.New(log, eopts)
	if err == nil {
		return dp, nil
	}
	var verr *cebpf.VerifierError
	if errors.Is(err, ebpf.ErrRejected) && errors.As(err, &verr) {
		// The error keeps the log's tail; the whole log goes to the log.
		log.Error("the verifier rejected an eBPF program", "log", fmt.Sprintf("%+v", verr))
	}
	if mode == config.DatapathEBPF {
		return nil, fmt.Errorf("ebpf datapath (--datapath ebpf; use auto to fall back to the kernel datapath): %w", err)
	}
	if !errors.Is(err, ebpf.ErrUnsupported) || errors.Is(err, ebpf.ErrRejected) {
		// A rejected program or a wrong setting (--xdp native on a veth, a
		// foreign fabric-gw) is reported, not papered over with the other
		// datapath.
		return nil, fmt.Errorf("ebpf datapath (not falling back: this is not a missing kernel feature): %w", err)
	}
	log.Warn("eBPF datapath unavailable; falling back to the kernel datapath", "err", err)
	dp2, kerr := kernel.New(log, kopts)
	if kerr != nil {
		return nil, fmt.Errorf("kernel datapath: %w", kerr)
	}
	return fallback{Datapath: dp2, why: err.Error()}, nil
}

// fallback is the kernel datapath standing in for an eBPF datapath that
// could not load; its status says so.
type fallback struct {
	datapath.Datapath
	why string
}

// Metrics are the kernel datapath's (fallback hides its methods but those
// of datapath.Datapath).
func (f fallback) Metrics() (datapath.Metrics, error) {
	if r, ok := f.Datapath.(datapath.MetricsReader); ok {
		return r.Metrics()
	}
	return datapath.Metrics{}, nil
}

// WatchDrift is the kernel datapath's (see datapath.DriftWatcher).
func (f fallback) WatchDrift(ctx context.Context) (<-chan struct{}, error) {
	if w, ok := f.Datapath.(datapath.DriftWatcher); ok {
		return w.WatchDrift(ctx)
	}
	return nil, errors.New("the datapath has no link events")
}

// Status warns with the first line of why: a verifier rejection carries
// the verifier's whole log, which the agent's log has (the warning at
// start-up), not a status line.
func (f fallback) Status(ctx context.Context) datapath.Status {
	st := f.Datapath.Status(ctx)
	why, _, _ := strings.Cut(f.why, "\n")
	st.Warnings = append(st.Warnings, "eBPF datapath unavailable, using the kernel datapath: "+why)
	return st
}
