// Package dockerplugin makes fabric a Docker network plugin: it serves
// Docker's NetworkDriver and IpamDriver protocols on a unix socket and turns
// the calls into the agent's operations. A Docker network is backed by the
// fabric network of the same name, a Docker container by one fabric
// sandbox (its namespace attached by path, owner "docker").
//
// It knows the agent only through the narrow Backend interface and nothing
// of the datapath; the agent knows nothing of it.
package dockerplugin

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

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// Backend is what the plugin needs of the agent.
type Backend interface {
	CreateNetwork(ctx context.Context, req api.NetworkCreate) (api.Network, error)
	Network(ref string) (api.Network, error)
	RemoveNetwork(ctx context.Context, ref string) error
	Connect(ctx context.Context, netRef string, req api.Connect) (api.Endpoint, error)
	Disconnect(ctx context.Context, netRef string, req api.Disconnect) error
	FreeSubnet(avoid []netip.Prefix) (netip.Prefix, error)
	CheckSubnet(sub netip.Prefix) error
	FreeAddress(netRef string, avoid map[netip.Addr]bool) (netip.Addr, error)
	CheckAddress(netRef string, ip netip.Addr) error
	CheckPorts(specs []string) error
	OwnSandbox(ctx context.Context, name, owner, containerID string, ports []string) error
	SetAliases(sandbox, netRef string, aliases []string) error
}

// Options configure the plugin.
type Options struct {
	Socket     string // where Docker finds the plugin, e.g. /run/docker/plugins/fabric.sock
	StateFile  string // the plugin's own state
	DockerHost string // Docker's API, unix:///var/run/docker.sock by default
	// IsNotFound says whether a Backend error means "no such thing".
	IsNotFound func(error) bool
	// AttachTimeout bounds the wait for a container's namespace after Join.
	AttachTimeout time.Duration
	// RetryEvery is how often removing a fabric network that was still in
	// use when its Docker network went is tried again.
	RetryEvery time.Duration
}

// addressSpace is the name of fabric's IPAM address space.
const addressSpace = "fabric"

// Owner marks the sandboxes of Docker's containers.
const Owner = "docker"

// DNSAddr is where fabricd answers the names Docker's resolver does not
// know (containers on other hosts, fabric's own sandboxes): dockerd is
// started with --dns 169.254.53.53, and the resolver forwards there from
// inside the container, so fabric answers with that container's view.
var DNSAddr = netip.MustParseAddr("169.254.53.53")

// Plugin is the running plugin.
type Plugin struct {
	b      Backend
	opts   Options
	log    *slog.Logger
	docker *dockerAPI

	mu      sync.Mutex // guards st, pending and attaching
	st      *state
	pending map[netip.Addr]bool // addresses handed to Docker, not yet connected
	// attaching are the goroutines waiting for a container's namespace,
	// by endpoint ID.
	attaching map[string]*attachJob
	bindMu    sync.Mutex // one network binding at a time

	ctx context.Context // the plugin's lifetime, for background work
	wg  sync.WaitGroup
}

// New loads the plugin's state; Run serves it.
func New(log *slog.Logger, b Backend, opts Options) (*Plugin, error) {
	if opts.DockerHost == "" {
		opts.DockerHost = "unix:///var/run/docker.sock"
	}
	if opts.AttachTimeout == 0 {
		opts.AttachTimeout = 2 * time.Minute
	}
	if opts.RetryEvery == 0 {
		opts.RetryEvery = 5 * time.Second
	}
	if opts.IsNotFound == nil {
		opts.IsNotFound = func(error) bool { return false }
	}
	d, err := newDockerAPI(opts.DockerHost)
	if err != nil {
		return nil, err
	}
	st, err := loadState(opts.StateFile)
	if err != nil {
		return nil, err
	}
	p := &Plugin{b: b, opts: opts, log: log, docker: d, st: st,
		pending: map[netip.Addr]bool{}, attaching: map[string]*attachJob{}}
	for _, ep := range st.Endpoints {
		if ep.Sandbox == "" {
			if ip, err := netip.ParseAddr(ep.Addr); err == nil {
				p.pending[ip] = true
			}
		}
	}
	return p, nil
}

// Run serves Docker on the socket until ctx ends.
func (p *Plugin) Run(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Dir(p.opts.Socket), 0o755); err != nil {
		return fmt.Errorf("docker plugin socket dir: %w", err)
	}
	if err := os.Remove(p.opts.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale docker plugin socket: %w", err)
	}
	ln, err := net.Listen("unix", p.opts.Socket)
	if err != nil {
		return fmt.Errorf("docker plugin: %w", err)
	}
	if err := os.Chmod(p.opts.Socket, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("docker plugin socket: %w", err)
	}
	p.ctx = ctx
	p.resume()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.removeLeftovers(ctx, p.opts.RetryEvery)
	}()
	srv := &http.Server{Handler: mux(p.log, p.routes()), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	p.log.Info("docker plugin listening", "socket", p.opts.Socket)
	err = srv.Serve(ln)
	<-done
	p.wg.Wait()
	os.Remove(p.opts.Socket)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("docker plugin: %w", err)
}

// resume restarts what a previous run left unfinished: bindings of
// networks to their names and attachments of joined containers; and it
// removes the pairs of Joins that run never finished.
func (p *Plugin) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.removeUnsavedPairsLocked()
	for _, n := range p.st.Networks {
		if n.Name == "" && n.Err == "" {
			p.bindLater(n.ID)
		}
	}
	for _, ep := range p.st.Endpoints {
		if ep.Key != "" && ep.Sandbox == "" {
			p.startAttachLocked(ep)
		}
	}
}

func (p *Plugin) routes() map[string]handler {
	return map[string]handler{
		"/Plugin.Activate": func([]byte) (any, error) {
			return activateResponse{Implements: []string{"NetworkDriver", "IpamDriver"}}, nil
		},
		"/NetworkDriver.GetCapabilities": func([]byte) (any, error) {
			return capabilitiesResponse{Scope: "local", ConnectivityScope: "global"}, nil
		},
		"/NetworkDriver.CreateNetwork":               on(p.createNetwork),
		"/NetworkDriver.DeleteNetwork":               on(p.deleteNetwork),
		"/NetworkDriver.CreateEndpoint":              on(p.createEndpoint),
		"/NetworkDriver.DeleteEndpoint":              on(p.deleteEndpoint),
		"/NetworkDriver.EndpointOperInfo":            func([]byte) (any, error) { return operInfoResponse{Value: map[string]any{}}, nil },
		"/NetworkDriver.Join":                        on(p.join),
		"/NetworkDriver.Leave":                       on(p.leave),
		"/NetworkDriver.ProgramExternalConnectivity": empty,
		"/NetworkDriver.RevokeExternalConnectivity":  empty,
		"/NetworkDriver.DiscoverNew":                 empty,
		"/NetworkDriver.DiscoverDelete":              empty,
		"/NetworkDriver.AllocateNetwork":             func([]byte) (any, error) { return nil, errNotSupported },
		"/NetworkDriver.FreeNetwork":                 func([]byte) (any, error) { return nil, errNotSupported },
		"/IpamDriver.GetCapabilities": func([]byte) (any, error) {
			return capabilitiesResponse{}, nil
		},
		"/IpamDriver.GetDefaultAddressSpaces": func([]byte) (any, error) {
			return addressSpacesResponse{LocalDefaultAddressSpace: addressSpace, GlobalDefaultAddressSpace: addressSpace}, nil
		},
		"/IpamDriver.RequestPool":    on(p.requestPool),
		"/IpamDriver.ReleasePool":    on(p.releasePool),
		"/IpamDriver.RequestAddress": on(p.requestAddress),
		"/IpamDriver.ReleaseAddress": on(p.releaseAddress),
	}
}

// saveLocked writes the state; the caller holds p.mu.
func (p *Plugin) saveLocked() error {
	if err := p.st.save(p.opts.StateFile); err != nil {
		return fmt.Errorf("fabric: %w", err)
	}
	return nil
}

// userErr prefixes an error for Docker's user, who sees it as is.
func userErr(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("fabric: %w", err)
}
