package lab_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

var (
	cniOnce sync.Once
	cniErr  error
)

// TestCNIPodsAcrossLabHosts: pods attached through fabric-cni on two lab
// hosts, on one overlay network, get addresses from the cluster's leases
// (no collision) and reach each other across hosts.
func TestCNIPodsAcrossLabHosts(t *testing.T) {
	l := newTestLab(t)
	cniOnce.Do(func() {
		if out, err := exec.Command("go", "build", "-o", binDir, "github.com/fabricnet/fabric/cmd/fabric-cni").CombinedOutput(); err != nil {
			cniErr = fmt.Errorf("build fabric-cni: %v\n%s", err, out)
		}
	})
	if cniErr != nil {
		t.Fatal(cniErr)
	}
	l.up(2, "kernel")
	l.on(1, "network", "create", "-d", "overlay", "--subnet", "10.76.0.0/16", "pods")
	l.waitNetworkOn(t, "pods", 10*time.Second, 2)
	cfg := libcni.NewCNIConfig([]string{binDir}, nil)
	var pods [3]string
	var ips [3]string
	for i := 1; i <= 2; i++ {
		b, _ := json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": "pods", "plugins": []any{
			map[string]any{"type": "fabric-cni", "socket": l.sock(i)}}})
		list, err := libcni.ConfListFromBytes(b)
		if err != nil {
			t.Fatal(err)
		}
		name, path := netnstest.New(t, "fcp")
		pods[i] = name
		rt := &libcni.RuntimeConf{ContainerID: fmt.Sprintf("%s-pod%d", l.name, i), NetNS: path, IfName: "eth0"}
		err = netns.Do(netns.Path(l.netns(i)), func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			res, err := cfg.AddNetworkList(ctx, list, rt)
			if err != nil {
				return err
			}
			r, err := types100.NewResultFromResult(res)
			if err == nil {
				ips[i] = r.IPs[0].Address.IP.String()
			}
			return err
		})
		if err != nil {
			t.Fatalf("ADD on n%d: %v", i, err)
		}
		t.Cleanup(func() {
			_ = netns.Do(netns.Path(l.netns(i)), func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				return cfg.DelNetworkList(ctx, list, rt)
			})
		})
	}
	if ips[1] == ips[2] || !strings.HasPrefix(ips[1], "10.76.") || !strings.HasPrefix(ips[2], "10.76.") {
		t.Fatalf("pod addresses %q and %q: want two different addresses of 10.76.0.0/16", ips[1], ips[2])
	}
	netnstest.Until(t, 15*time.Second, "pod on n1 pings pod on n2", func() error {
		return exec.Command("ip", "netns", "exec", pods[1], "ping", "-c", "1", "-W", "1", ips[2]).Run()
	})
}
