package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/fabricnet/fabric/cmd/internal/cni"
)

// TestCNIBadInput: every bad ADD gets a spec error with a clear message
// and leaves nothing behind (no sandbox, no interface in the pod, no held
// namespace reference), and what was there before stays as it was.
func TestCNIBadInput(t *testing.T) {
	c := newCNIHost(t)
	l := c.confList(t, "1.0.0")
	_, pathFirst := podNS(t)
	first := &libcni.RuntimeConf{ContainerID: cniTestID(t, "first"), NetNS: pathFirst, IfName: "eth0",
		CapabilityArgs: map[string]any{
			"ips":          []string{"10.77.0.50/24"},
			"portMappings": []map[string]any{{"hostPort": 18200, "containerPort": 80, "protocol": "tcp"}},
		}}
	if _, err := c.add(l, first); err != nil {
		t.Fatalf("ADD with a static IP and a port: %v", err)
	}
	if ip := c.cniSandboxes(t)[0].Endpoints[0].IP; ip != "10.77.0.50/24" {
		t.Fatalf("static IP not given: %s", ip)
	}
	unknown := c.confList(t, "1.0.0")
	raw := strings.Replace(string(unknown.Plugins[0].Bytes), c.network, c.name("nope"), 1)
	unknownNet, err := libcni.ConfListFromBytes([]byte(`{"cniVersion":"1.0.0","name":"` + c.network + `","plugins":[` + raw + `]}`))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		list *libcni.NetworkConfigList
		caps map[string]any
		code uint
		msg  string
	}{
		{"unknown network", unknownNet, nil, types.ErrInvalidNetworkConfig, "not found"},
		{"bad ips", l, map[string]any{"ips": []string{"300.1.1.1"}}, types.ErrInvalidNetworkConfig, "not an IP address"},
		{"two ips", l, map[string]any{"ips": []string{"10.77.0.60", "10.77.0.61"}}, types.ErrInvalidNetworkConfig, "one address"},
		{"ip outside the subnet", l, map[string]any{"ips": []string{"10.99.0.5/24"}}, types.ErrInvalidNetworkConfig, "10.99.0.5"},
		{"taken static ip", l, map[string]any{"ips": []string{"10.77.0.50/24"}}, cni.ErrInUse, "10.77.0.50"},
		{"port already published", l, map[string]any{"portMappings": []map[string]any{{"hostPort": 18200, "containerPort": 80, "protocol": "tcp"}}}, cni.ErrInUse, "18200"},
		{"sctp port", l, map[string]any{"portMappings": []map[string]any{{"hostPort": 18201, "containerPort": 80, "protocol": "sctp"}}}, types.ErrInvalidNetworkConfig, "sctp"},
		{"bad mac", l, map[string]any{"mac": "not-a-mac"}, types.ErrInvalidNetworkConfig, "not a MAC"},
		{"multicast mac", l, map[string]any{"mac": "01:00:5e:00:00:01"}, types.ErrInvalidNetworkConfig, "unicast"},
	}
	held := filepath.Join(c.dir, "state", "netns")
	heldBefore, _ := os.ReadDir(held)
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			pod, path := podNS(t)
			rt := &libcni.RuntimeConf{ContainerID: cniTestID(t, "x"), NetNS: path, IfName: "eth0", CapabilityArgs: tc.caps}
			_, err := c.add(tc.list, rt)
			if cniCode(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("ADD: %v (code %d), want code %d mentioning %q", err, cniCode(err), tc.code, tc.msg)
			}
			if got := links(t, pod); !slices.Equal(got, []string{"lo"}) {
				t.Errorf("pod has %v after a failed ADD, want only lo", got)
			}
			if sbs := c.cniSandboxes(t); len(sbs) != 1 || sbs[0].ContainerID != first.ContainerID {
				t.Errorf("sandboxes after a failed ADD: %+v", sbs)
			}
			if now, _ := os.ReadDir(held); len(now) != len(heldBefore) {
				t.Errorf("held namespace references: %d, before %d", len(now), len(heldBefore))
			}
		})
	}
	// The first attachment is untouched by all that: its port still answers.
	if err := c.check(l, first); err != nil {
		t.Errorf("CHECK of the first attachment: %v", err)
	}
	if err := c.del(l, first); err != nil {
		t.Fatal(err)
	}
}

// TestCNIMalformedInput: a configuration that is not JSON, has trailing
// data, asks for an IPAM plugin, or has no name is refused with a
// decoding or configuration error before the agent is asked anything.
func TestCNIMalformedInput(t *testing.T) {
	c := newCNIHost(t)
	_, path := podNS(t)
	plugin := filepath.Join(cniPluginDir(t), "fabric-cni")
	for _, tc := range []struct {
		name, stdin string
		code        uint
	}{
		{"not json", `{"cniVersion": "1.0.0", "name": `, types.ErrDecodingFailure},
		{"trailing data", `{"cniVersion":"1.0.0","name":"x","type":"fabric-cni","socket":"` + c.socket + `"} {}`, types.ErrDecodingFailure},
		{"no name", `{"cniVersion":"1.0.0","type":"fabric-cni","socket":"` + c.socket + `"}`, types.ErrInvalidNetworkConfig},
		{"ipam", `{"cniVersion":"1.0.0","name":"` + c.network + `","type":"fabric-cni","socket":"` + c.socket + `","ipam":{"type":"host-local"}}`, types.ErrInvalidNetworkConfig},
		{"relative socket", `{"cniVersion":"1.0.0","name":"` + c.network + `","type":"fabric-cni","socket":"fabricd.sock"}`, types.ErrInvalidNetworkConfig},
		{"unsupported version", `{"cniVersion":"0.3.1","name":"` + c.network + `","type":"fabric-cni","socket":"` + c.socket + `"}`, types.ErrIncompatibleCNIVersion},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			var out bytes.Buffer
			err := c.inHostNS(func() error {
				cmd := exec.Command(plugin)
				cmd.Env = []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=" + cniTestID(t, "m"), "CNI_NETNS=" + path, "CNI_IFNAME=eth0", "CNI_PATH=" + cniPluginDir(t)}
				cmd.Stdin, cmd.Stdout = strings.NewReader(tc.stdin), &out
				return cmd.Run()
			})
			if err == nil {
				t.Fatalf("plugin accepted %q: %s", tc.stdin, out.String())
			}
			var e types.Error
			if jerr := json.Unmarshal(out.Bytes(), &e); jerr != nil || e.Code != tc.code || e.Msg == "" {
				t.Fatalf("error %q (%v), want a spec error with code %d", out.String(), jerr, tc.code)
			}
		})
	}
	if sbs := c.cniSandboxes(t); len(sbs) != 0 {
		t.Errorf("sandboxes after malformed input: %+v", sbs)
	}
}
