package dockerplugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"
)

// Docker's plugin calls carry network IDs, never names: CreateNetwork is
// made before Docker stores the network, so the plugin learns the name
// afterwards from Docker's API (GET /networks/ID), never while dockerd
// waits on the plugin during its own start (that deadlocks).

// dockerAPI is a minimal client of Docker's engine API on a unix socket.
type dockerAPI struct {
	c *http.Client
}

// errNoSuchNetwork: Docker does not (yet) know the network.
var errNoSuchNetwork = errors.New("docker does not know the network")

func newDockerAPI(host string) (*dockerAPI, error) {
	path, ok := strings.CutPrefix(host, "unix://")
	if !ok {
		return nil, fmt.Errorf("docker host %q: only unix:// sockets are supported", host)
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return &dockerAPI{c: &http.Client{Transport: tr, Timeout: 5 * time.Second}}, nil
}

// networkName asks Docker for the name of network id.
func (d *dockerAPI) networkName(ctx context.Context, id string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/v1.41/networks/"+id, nil)
	if err != nil {
		return "", err
	}
	resp, err := d.c.Do(req)
	if err != nil {
		return "", fmt.Errorf("ask docker for network %s: %w", shortID(id), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return "", errNoSuchNetwork
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("ask docker for network %s: status %s", shortID(id), resp.Status)
	}
	var out struct{ Name string }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return "", fmt.Errorf("ask docker for network %s: %w", shortID(id), err)
	}
	if out.Name == "" {
		return "", fmt.Errorf("docker reports no name for network %s", shortID(id))
	}
	return out.Name, nil
}

// waitNetworkName polls until Docker has stored the network (right after
// CreateNetwork returns) or ctx ends.
func (d *dockerAPI) waitNetworkName(ctx context.Context, id string) (string, error) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		name, err := d.networkName(ctx, id)
		if err == nil || !errors.Is(err, errNoSuchNetwork) {
			return name, err
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("docker did not report network %s: %w", shortID(id), ctx.Err())
		case <-tick.C:
		}
	}
}

// container is what Docker says about the container behind an endpoint.
type container struct {
	ID      string
	Name    string
	Aliases []string // --network-alias and Docker's own (the short ID)
}

// endpointContainer finds the container of Docker endpoint epID on network
// netID, polling until Docker lists it or ctx ends.
func (d *dockerAPI) endpointContainer(ctx context.Context, netID, epID string) (container, error) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		var n struct {
			Name       string
			Containers map[string]struct{ Name, EndpointID string }
		}
		// Docker's API is not served yet while dockerd restores its
		// containers at start: errors are retried until ctx ends.
		err := d.get(ctx, "/networks/"+netID, &n)
		for id, c := range n.Containers {
			if c.EndpointID != epID {
				continue
			}
			out := container{ID: id, Name: c.Name}
			var ins struct {
				NetworkSettings struct {
					Networks map[string]struct {
						EndpointID string
						Aliases    []string
					}
				}
			}
			if err := d.get(ctx, "/containers/"+id+"/json", &ins); err != nil {
				return out, err
			}
			for _, net := range ins.NetworkSettings.Networks {
				if net.EndpointID == epID {
					out.Aliases = net.Aliases
				}
			}
			return out, nil
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return container{}, err
			}
			return container{}, fmt.Errorf("docker does not list endpoint %s: %w", shortID(epID), ctx.Err())
		case <-tick.C:
		}
	}
}

// get decodes the JSON answer of GET path.
func (d *dockerAPI) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/v1.41"+path, nil)
	if err != nil {
		return err
	}
	resp, err := d.c.Do(req)
	if err != nil {
		return fmt.Errorf("ask docker %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("ask docker %s: status %s", path, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("ask docker %s: %w", path, err)
	}
	return nil
}
