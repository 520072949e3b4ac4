package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// DefaultSocket is where fabricd listens unless configured otherwise.
const DefaultSocket = "/run/fabric/fabricd.sock"

// ErrUnreachable wraps failures to reach the agent at all (as opposed to the
// agent rejecting a request).
var ErrUnreachable = errors.New("agent unreachable")

// Client talks to fabricd over its unix socket.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the agent listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns: 4,
	}
	return &Client{socket: socket, http: &http.Client{Transport: tr, Timeout: 60 * time.Second}}
}

// Do sends a request with an optional JSON body and decodes the JSON reply
// into out (when non-nil). Rejections come back as *Error.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://fabricd/"+Version+path, rd)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%w at %s: %w (is fabricd running? set --socket or FABRIC_SOCKET)", ErrUnreachable, c.socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read reply: %w", err)
	}
	if resp.StatusCode >= 300 {
		var e Error
		if json.Unmarshal(data, &e) != nil || e.Message == "" {
			e = Error{Message: fmt.Sprintf("agent replied %s", resp.Status), Code: CodeInternal}
		}
		return &e
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decode reply: %w", err)
		}
	}
	return nil
}

// Keys lists the gossip keys' fingerprints.
func (c *Client) Keys(ctx context.Context) ([]Key, error) {
	var out []Key
	err := c.Do(ctx, http.MethodGet, "/cluster/keys", nil, &out)
	return out, err
}

// KeyOp runs one key rotation step on every member.
func (c *Client) KeyOp(ctx context.Context, op KeyOp) error {
	return c.Do(ctx, http.MethodPost, "/cluster/keys", op, nil)
}

// Status returns the agent's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.Do(ctx, http.MethodGet, "/status", nil, &s)
}

// CreateNetwork creates a network.
func (c *Client) CreateNetwork(ctx context.Context, req NetworkCreate) (Network, error) {
	var n Network
	return n, c.Do(ctx, http.MethodPost, "/networks", req, &n)
}

// Networks lists networks.
func (c *Client) Networks(ctx context.Context) ([]Network, error) {
	var ns []Network
	return ns, c.Do(ctx, http.MethodGet, "/networks", nil, &ns)
}

// Network returns one network by name or ID.
func (c *Client) Network(ctx context.Context, name string) (Network, error) {
	var n Network
	return n, c.Do(ctx, http.MethodGet, "/networks/"+url.PathEscape(name), nil, &n)
}

// RemoveNetwork removes a network without endpoints.
func (c *Client) RemoveNetwork(ctx context.Context, name string) error {
	return c.Do(ctx, http.MethodDelete, "/networks/"+url.PathEscape(name), nil, nil)
}

// Connect attaches a sandbox (or namespace path) to a network.
func (c *Client) Connect(ctx context.Context, network string, req Connect) (Endpoint, error) {
	var ep Endpoint
	return ep, c.Do(ctx, http.MethodPost, "/networks/"+url.PathEscape(network)+"/connect", req, &ep)
}

// Disconnect detaches a sandbox from a network.
func (c *Client) Disconnect(ctx context.Context, network string, req Disconnect) error {
	return c.Do(ctx, http.MethodPost, "/networks/"+url.PathEscape(network)+"/disconnect", req, nil)
}

// CreateSandbox creates a sandbox (and starts its command if one is given).
func (c *Client) CreateSandbox(ctx context.Context, req SandboxCreate) (Sandbox, error) {
	var s Sandbox
	return s, c.Do(ctx, http.MethodPost, "/sandboxes", req, &s)
}

// SetProcess reports the PID of a command the client runs in the sandbox.
func (c *Client) SetProcess(ctx context.Context, name string, p SandboxProcess) error {
	return c.Do(ctx, http.MethodPut, "/sandboxes/"+url.PathEscape(name)+"/process", p, nil)
}

// Sandboxes lists sandboxes.
func (c *Client) Sandboxes(ctx context.Context) ([]Sandbox, error) {
	var ss []Sandbox
	return ss, c.Do(ctx, http.MethodGet, "/sandboxes", nil, &ss)
}

// Sandbox returns one sandbox.
func (c *Client) Sandbox(ctx context.Context, name string) (Sandbox, error) {
	var s Sandbox
	return s, c.Do(ctx, http.MethodGet, "/sandboxes/"+url.PathEscape(name), nil, &s)
}

// RemoveSandbox stops a sandbox's process and removes it with its endpoints.
func (c *Client) RemoveSandbox(ctx context.Context, name string) error {
	return c.Do(ctx, http.MethodDelete, "/sandboxes/"+url.PathEscape(name), nil, nil)
}

// Endpoints lists endpoints.
func (c *Client) Endpoints(ctx context.Context) ([]Endpoint, error) {
	var eps []Endpoint
	return eps, c.Do(ctx, http.MethodGet, "/endpoints", nil, &eps)
}
