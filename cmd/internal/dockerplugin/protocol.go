package dockerplugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"
)

// The bodies of Docker's plugin protocol (libnetwork's remote driver and
// remote IPAM APIs, plugin API v1): JSON over HTTP POST on a unix socket,
// one path per call. Failures are a body {"Err": "..."}: Docker shows that
// text to the user.

const contentType = "application/vnd.docker.plugins.v1+json"

type activateResponse struct {
	Implements []string
}

type capabilitiesResponse struct {
	Scope              string `json:",omitempty"`
	ConnectivityScope  string `json:",omitempty"`
	RequiresMACAddress bool   `json:",omitempty"`
}

type addressSpacesResponse struct {
	LocalDefaultAddressSpace  string
	GlobalDefaultAddressSpace string
}

type requestPoolRequest struct {
	AddressSpace string
	Pool         string
	SubPool      string
	Options      map[string]string
	V6           bool
}

type requestPoolResponse struct {
	PoolID string
	Pool   string
	Data   map[string]string
}

type releasePoolRequest struct {
	PoolID string
}

type requestAddressRequest struct {
	PoolID  string
	Address string
	Options map[string]string
}

type requestAddressResponse struct {
	Address string
	Data    map[string]string
}

type releaseAddressRequest struct {
	PoolID  string
	Address string
}

type ipamData struct {
	AddressSpace string
	Pool         string
	Gateway      string
	AuxAddresses map[string]string
}

type createNetworkRequest struct {
	NetworkID string
	Options   map[string]any
	IPv4Data  []ipamData
	IPv6Data  []ipamData
}

type networkRequest struct {
	NetworkID string
}

type endpointInterface struct {
	Address     string `json:",omitempty"`
	AddressIPv6 string `json:",omitempty"`
	MacAddress  string `json:",omitempty"`
}

type createEndpointRequest struct {
	NetworkID  string
	EndpointID string
	Interface  *endpointInterface
	Options    map[string]any
}

type createEndpointResponse struct {
	Interface *endpointInterface `json:",omitempty"`
}

type endpointRequest struct {
	NetworkID  string
	EndpointID string
}

type joinRequest struct {
	NetworkID  string
	EndpointID string
	SandboxKey string
	Options    map[string]any
}

type joinResponse struct {
	InterfaceName         *interfaceName `json:",omitempty"`
	Gateway               string         `json:",omitempty"`
	DisableGatewayService bool
}

// interfaceName tells Docker which host link to move into the sandbox
// (SrcName) and how to name it there (DstPrefix plus the next free index).
type interfaceName struct {
	SrcName   string
	DstPrefix string
}

type operInfoResponse struct {
	Value map[string]any
}

type errorResponse struct {
	Err string
}

// handler serves one protocol call: it decodes the request into a value of
// its own type and returns the response body or an error for Docker.
type handler func(body []byte) (any, error)

// on adapts a typed call to a handler.
func on[Req any](f func(Req) (any, error)) handler {
	return func(body []byte) (any, error) {
		var req Req
		if len(body) > 0 {
			if err := json.Unmarshal(body, &req); err != nil {
				return nil, fmt.Errorf("fabric: malformed request: %w", err)
			}
		}
		return f(req)
	}
}

// empty answers a call that needs nothing done.
func empty([]byte) (any, error) { return struct{}{}, nil }

// mux routes the protocol's paths to handlers.
func mux(log *slog.Logger, routes map[string]handler) http.Handler {
	m := http.NewServeMux()
	for path, h := range routes {
		m.HandleFunc("POST "+path, func(w http.ResponseWriter, r *http.Request) {
			t0 := time.Now()
			body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			var out any
			if err == nil {
				out, err = h(body)
			}
			log.Debug("docker call", "call", path, "request", string(body), "took", time.Since(t0), "err", err)
			w.Header().Set("Content-Type", contentType)
			if err != nil {
				w.WriteHeader(http.StatusInternalServerError)
				out = errorResponse{Err: err.Error()}
			}
			_ = json.NewEncoder(w).Encode(out)
		})
	}
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(errorResponse{Err: "fabric: unsupported call " + r.URL.Path})
	})
	return m
}

// errNotSupported is returned for calls fabric does not implement.
var errNotSupported = errors.New("fabric: not supported")
