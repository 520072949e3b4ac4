package dockerplugin

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// A Docker container's namespace does not exist yet when Docker calls
// Join for `docker run` (runc makes it and Docker's hook mounts it at the
// sandbox key afterwards). On bridge and overlay networks Join hands
// Docker a veth pair (see link.go) and the gateway, and Docker moves,
// names and addresses the interface and owns the routes, as with its own
// drivers; a background job waits for Docker to have done so and has the
// agent adopt the pair, with the address Docker's IPAM call handed out:
// the agent holds the namespace by a bind mount and checks its identity
// on every use, and drops the endpoints when Docker lets go of it. On
// macvlan and ipvlan networks Join hands over nothing and fabric makes
// the interface and the default route itself once the namespace exists.
// Docker's gateway service stays off either way (no docker_gwbridge).

// keyPortMap is where Docker passes -p in CreateEndpoint's options.
const keyPortMap = "com.docker.network.portmap"

func (p *Plugin) createEndpoint(req createEndpointRequest) (any, error) {
	name, err := p.bind(req.NetworkID)
	if err != nil {
		return nil, err
	}
	if req.Interface == nil || req.Interface.Address == "" {
		return nil, fmt.Errorf("fabric: no IPv4 address for the endpoint: the network must use --ipam-driver fabric")
	}
	if req.Interface.MacAddress != "" {
		return nil, errors.New("fabric: --mac-address is not supported: fabric derives each endpoint's MAC from its address")
	}
	addr, err := netip.ParsePrefix(req.Interface.Address)
	if err != nil {
		return nil, fmt.Errorf("fabric: bad endpoint address %q: %w", req.Interface.Address, err)
	}
	ports, err := portSpecs(req.Options[keyPortMap])
	if err != nil {
		return nil, err
	}
	if err := p.b.CheckPorts(ports); err != nil {
		return nil, userErr(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.st.Endpoints[req.EndpointID] = &epRec{ID: req.EndpointID, NetworkID: req.NetworkID, Addr: addr.Addr().String(), Ports: ports}
	p.pending[addr.Addr()] = true
	if err := p.saveLocked(); err != nil {
		delete(p.st.Endpoints, req.EndpointID)
		return nil, err
	}
	p.log.Debug("docker endpoint", "network", name, "endpoint", shortID(req.EndpointID), "ip", addr)
	return createEndpointResponse{}, nil
}

// portSpecs turns Docker's port map into fabric's -p specs.
func portSpecs(v any) ([]string, error) {
	list, _ := v.([]any)
	var out []string
	for _, x := range list {
		m, _ := x.(map[string]any)
		proto, _ := m["Proto"].(float64)
		port, _ := m["Port"].(float64)
		hostPort, _ := m["HostPort"].(float64)
		hostEnd, _ := m["HostPortEnd"].(float64)
		hostIP, _ := m["HostIP"].(string)
		var p string
		switch proto {
		case 6:
			p = "tcp"
		case 17:
			p = "udp"
		default:
			return nil, fmt.Errorf("fabric: -p with protocol %v is not supported (tcp and udp are)", proto)
		}
		if hostPort == 0 || (hostEnd != 0 && hostEnd != hostPort) {
			return nil, fmt.Errorf("fabric: -p %v/%s: give one explicit host port (-p HOSTPORT:%v); fabric does not pick random host ports or ranges", port, p, port)
		}
		spec := fmt.Sprintf("%d:%d/%s", int(hostPort), int(port), p)
		if hostIP != "" && hostIP != "0.0.0.0" {
			spec = hostIP + ":" + spec
		}
		out = append(out, spec)
	}
	return out, nil
}

func (p *Plugin) join(req joinRequest) (any, error) {
	if req.SandboxKey == "" {
		return nil, errors.New("fabric: Docker gave no sandbox key")
	}
	ep, name := p.endpointOnNetwork(req.EndpointID)
	if ep == nil {
		return nil, fmt.Errorf("fabric: unknown endpoint %s", shortID(req.EndpointID))
	}
	if name == "" {
		return nil, fmt.Errorf("fabric: network %s is not backed by fabric", shortID(ep.NetworkID))
	}
	n, err := p.b.Network(name)
	if err != nil {
		return nil, userErr(err)
	}
	resp := joinResponse{DisableGatewayService: true}
	var link string
	if handsLink(n.Driver) {
		var peer string
		link, peer = linkNames(req.EndpointID)
		ip, err := netip.ParseAddr(ep.Addr)
		if err != nil {
			return nil, fmt.Errorf("fabric: endpoint %s has a bad address %q: %w", shortID(ep.ID), ep.Addr, err)
		}
		if err := makePair(link, peer, n.MTU, api.EndpointMAC(ip)); err != nil {
			return nil, err
		}
		resp.InterfaceName = &interfaceName{SrcName: peer, DstPrefix: "eth"}
		if !n.Internal {
			resp.Gateway = n.Gateway
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	ep = p.st.Endpoints[req.EndpointID]
	if ep == nil {
		_ = removePair(link)
		return nil, fmt.Errorf("fabric: endpoint %s went while joining", shortID(req.EndpointID))
	}
	ep.Key, ep.Link = req.SandboxKey, link
	if err := p.saveLocked(); err != nil {
		_ = removePair(link)
		return nil, err
	}
	p.startAttachLocked(ep)
	return resp, nil
}

// attachJob is a running wait-and-connect of one endpoint.
type attachJob struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// startAttachLocked starts connecting ep's namespace once it exists; the
// caller holds p.mu.
func (p *Plugin) startAttachLocked(ep *epRec) {
	if p.ctx == nil || p.attaching[ep.ID] != nil {
		return
	}
	ctx, cancel := context.WithTimeout(p.ctx, p.opts.AttachTimeout)
	job := &attachJob{cancel: cancel, done: make(chan struct{})}
	p.attaching[ep.ID] = job
	e := *ep
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer close(job.done)
		defer cancel()
		err := p.attach(ctx, &e)
		p.mu.Lock()
		if p.attaching[e.ID] == job {
			delete(p.attaching, e.ID)
		}
		p.mu.Unlock()
		if err != nil && ctx.Err() == nil {
			p.log.Warn("connect docker container", "endpoint", shortID(e.ID), "key", e.Key, "err", err)
		}
	}()
}

// attach waits for the namespace at ep.Key (and, with a link handed to
// Docker, for Docker to have moved and addressed it there) and connects
// it.
func (p *Plugin) attach(ctx context.Context, ep *epRec) error {
	var err error
	if ep.Link != "" {
		ip, _ := netip.ParseAddr(ep.Addr)
		err = waitPeer(ctx, ep.Key, ep.Link, ip)
	} else {
		err = waitNamespace(ctx, ep.Key)
	}
	if err != nil {
		return err
	}
	p.mu.Lock()
	n := p.st.Networks[ep.NetworkID]
	var name string
	if n != nil {
		name = n.Name
	}
	p.mu.Unlock()
	if name == "" {
		return fmt.Errorf("network %s is not backed by fabric", shortID(ep.NetworkID))
	}
	got, err := p.b.Connect(ctx, name, api.Connect{Sandbox: ep.Key, IP: ep.Addr, Link: ep.Link})
	if err != nil {
		return fmt.Errorf("connect to %s: %w", name, err)
	}
	if err := p.b.OwnSandbox(ctx, got.Sandbox, Owner, filepath.Base(ep.Key), ep.Ports); err != nil {
		_ = p.b.Disconnect(context.Background(), name, api.Disconnect{Sandbox: got.Sandbox})
		return fmt.Errorf("publish ports of %s: %w", got.Sandbox, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	cur := p.st.Endpoints[ep.ID]
	if cur == nil {
		return nil
	}
	cur.Sandbox = got.Sandbox
	if ip, err := netip.ParseAddr(ep.Addr); err == nil {
		delete(p.pending, ip)
	}
	if err := p.saveLocked(); err != nil {
		return err
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.nameEndpoint(ep, name, got.Sandbox)
	}()
	return nil
}

// nameEndpoint gives a connected endpoint the container's names (its name
// and network aliases, from Docker's API) in fabric's DNS, so fabric
// sandboxes and other hosts resolve them, and marks the sandbox with the
// container's ID. Without an answer from Docker within 30 s (dockerd
// serves its API only after restoring its containers) the endpoint stays
// without names.
func (p *Plugin) nameEndpoint(ep *epRec, network, sandbox string) {
	ctx, cancel := context.WithTimeout(p.lifetime(), 30*time.Second)
	defer cancel()
	c, err := p.docker.endpointContainer(ctx, ep.NetworkID, ep.ID)
	if err == nil {
		err = p.b.SetAliases(sandbox, network, append([]string{c.Name}, c.Aliases...))
	}
	if err == nil {
		err = p.b.OwnSandbox(ctx, sandbox, Owner, c.ID, nil)
	}
	if err != nil {
		p.log.Warn("no names for docker container in fabric's DNS", "endpoint", shortID(ep.ID), "sandbox", sandbox, "err", err)
	}
}

// stopAttach cancels a running attach of endpoint id and waits for it.
func (p *Plugin) stopAttach(id string) {
	p.mu.Lock()
	job := p.attaching[id]
	delete(p.attaching, id)
	p.mu.Unlock()
	if job != nil {
		job.cancel()
		<-job.done
	}
}

func (p *Plugin) leave(req endpointRequest) (any, error) {
	p.stopAttach(req.EndpointID)
	return struct{}{}, p.disconnect(req.EndpointID, false)
}

func (p *Plugin) deleteEndpoint(req endpointRequest) (any, error) {
	p.stopAttach(req.EndpointID)
	return struct{}{}, p.disconnect(req.EndpointID, true)
}

// endpointOnNetwork returns the record of endpoint id (nil if unknown)
// and the name of its fabric network ("" if the network is not known).
func (p *Plugin) endpointOnNetwork(id string) (ep *epRec, name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ep = p.st.Endpoints[id]
	if ep != nil {
		if n := p.st.Networks[ep.NetworkID]; n != nil {
			name = n.Name
		}
	}
	return ep, name
}

// disconnect removes the endpoint's fabric side (and its record when
// forget is set).
func (p *Plugin) disconnect(id string, forget bool) error {
	ep, name := p.endpointOnNetwork(id)
	if ep == nil {
		return nil
	}
	if ep.Sandbox != "" && name != "" {
		err := p.b.Disconnect(p.lifetime(), name, api.Disconnect{Sandbox: ep.Sandbox})
		if err != nil && !p.opts.IsNotFound(err) {
			return userErr(err)
		}
	}
	if ep.Link != "" {
		// Never adopted (the container did not start), or adopted and
		// removed with the endpoint just now.
		if err := removePair(ep.Link); err != nil {
			return err
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if cur := p.st.Endpoints[id]; cur != nil {
		cur.Sandbox, cur.Key, cur.Link = "", "", ""
		if forget {
			delete(p.st.Endpoints, id)
			if ip, err := netip.ParseAddr(cur.Addr); err == nil {
				delete(p.pending, ip)
			}
		}
	}
	return p.saveLocked()
}
