package cni

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

func TestParseConfDefaults(t *testing.T) {
	c, err := ParseConf([]byte(`{"cniVersion":"1.0.0","name":"pods","type":"fabric-cni"}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Network != "pods" || c.Socket != api.DefaultSocket {
		t.Errorf("defaults: network %q socket %q, want the config's name and %s", c.Network, c.Socket, api.DefaultSocket)
	}
}

// TestRequestFromRuntimeConfig: the capabilities become the agent's
// request in Docker's -p syntax and one static address.
func TestRequestFromRuntimeConfig(t *testing.T) {
	c, err := ParseConf([]byte(`{"cniVersion":"1.0.0","name":"pods","type":"fabric-cni","network":"blue","socket":"/run/x.sock",
	  "runtimeConfig":{"ips":["10.1.2.3/24"],"mac":"02:00:00:00:00:01",
	  "portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"},{"hostPort":53,"containerPort":5353,"protocol":"UDP","hostIP":"192.0.2.1"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	req, err := c.request("cni-x", "ctr", "/var/run/netns/x", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	want := api.SandboxCreate{Name: "cni-x", Network: "blue", NetNS: "/var/run/netns/x", Owner: api.OwnerCNI, ContainerID: "ctr",
		IfName: "eth0", MAC: "02:00:00:00:00:01", IP: "10.1.2.3", Ports: []string{"8080:80/tcp", "192.0.2.1:53:5353/udp"}}
	if !reflect.DeepEqual(req, want) {
		t.Errorf("request\n got %+v\nwant %+v", req, want)
	}
}

func TestBadConf(t *testing.T) {
	for _, tc := range []struct {
		conf string
		code uint
		msg  string
	}{
		{`{"name":`, types.ErrDecodingFailure, "malformed"},
		{`{"cniVersion":"1.0.0","type":"fabric-cni"}`, types.ErrInvalidNetworkConfig, "no \"name\""},
		{`{"cniVersion":"1.0.0","name":"a","network":"x/y"}`, types.ErrInvalidNetworkConfig, "not a fabric network name"},
		{`{"cniVersion":"1.0.0","name":"a","socket":"rel.sock"}`, types.ErrInvalidNetworkConfig, "absolute"},
		{`{"cniVersion":"1.0.0","name":"a","ipam":{"type":"host-local"}}`, types.ErrInvalidNetworkConfig, "fabric's IPAM"},
	} {
		_, err := ParseConf([]byte(tc.conf))
		var e *types.Error
		if !errors.As(err, &e) || e.Code != tc.code || !strings.Contains(e.Msg, tc.msg) {
			t.Errorf("%s: %v, want code %d mentioning %q", tc.conf, err, tc.code, tc.msg)
		}
	}
	for _, rc := range []string{
		`{"ips":["10.0.0.1","10.0.0.2"]}`, `{"ips":["fe80::1"]}`, `{"ips":["nope"]}`, `{"mac":"zz"}`,
		`{"portMappings":[{"hostPort":0,"containerPort":80}]}`, `{"portMappings":[{"hostPort":80,"containerPort":80,"protocol":"sctp"}]}`,
		`{"portMappings":[{"hostPort":80,"containerPort":80,"hostIP":"::1"}]}`,
	} {
		c, err := ParseConf([]byte(`{"cniVersion":"1.0.0","name":"a","runtimeConfig":` + rc + `}`))
		if err != nil {
			t.Fatalf("%s: %v", rc, err)
		}
		var e *types.Error
		if _, err := c.request("n", "c", "/p", "eth0"); !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig {
			t.Errorf("runtimeConfig %s: %v, want an invalid-config error", rc, err)
		}
	}
}

// TestSandboxName: one DNS label, stable, different per attachment.
func TestSandboxName(t *testing.T) {
	a := SandboxName("net", "c1", "eth0")
	if a != SandboxName("net", "c1", "eth0") || len(a) > 63 || !strings.HasPrefix(a, "cni-") {
		t.Fatalf("name %q", a)
	}
	for _, b := range []string{SandboxName("net", "c1", "eth1"), SandboxName("net", "c2", "eth0"), SandboxName("other", "c1", "eth0")} {
		if a == b {
			t.Errorf("two attachments share the name %q", a)
		}
	}
}

// TestAgentErrorCodes: the agent's refusals map to the spec's codes; an
// unreachable agent is "try again later".
func TestAgentErrorCodes(t *testing.T) {
	conf := &NetConf{Socket: "/run/x.sock"}
	for _, tc := range []struct {
		err  error
		code uint
	}{
		{&api.Error{Code: api.CodeInvalid, Message: "bad"}, types.ErrInvalidNetworkConfig},
		{&api.Error{Code: api.CodeNotFound, Message: "no net"}, types.ErrInvalidNetworkConfig},
		{&api.Error{Code: api.CodeConflict, Message: "taken"}, ErrInUse},
		{&api.Error{Code: api.CodeExhausted, Message: "full"}, ErrExhausted},
		{api.ErrUnreachable, types.ErrTryAgainLater},
		{errors.New("boom"), types.ErrInternal},
	} {
		var e *types.Error
		if err := agentError(conf, "ADD", tc.err); !errors.As(err, &e) || e.Code != tc.code {
			t.Errorf("%v → %v, want code %d", tc.err, err, tc.code)
		}
	}
}

// TestExampleConflist: deploy/cni's example is a valid list whose first
// plugin is fabric-cni with the documented keys.
func TestExampleConflist(t *testing.T) {
	list, err := libcni.ConfListFromFile("../../../deploy/cni/10-fabric.conflist")
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Plugins) == 0 || list.Plugins[0].Network.Type != Type {
		t.Fatalf("first plugin of the example is not %s: %+v", Type, list.Plugins)
	}
	// As a runtime hands it over: the list's name and version added.
	var m map[string]any
	if err := json.Unmarshal(list.Plugins[0].Bytes, &m); err != nil {
		t.Fatal(err)
	}
	m["name"], m["cniVersion"] = list.Name, list.CNIVersion
	stdin, _ := json.Marshal(m)
	c, err := ParseConf(stdin)
	if err != nil {
		t.Fatal(err)
	}
	if c.Network != "pods" || c.Socket != api.DefaultSocket || !c.Capabilities["portMappings"] {
		t.Errorf("example config %+v: want network pods, the default socket and portMappings", c)
	}
}
