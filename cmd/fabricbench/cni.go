package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns"
)

// The cni section compares fabric-cni with the reference CNI chain from
// Debian (bridge + host-local, + portmap for ports), both driven through
// libcni in host h1 as a runtime would: ADD time, a TCP stream and
// ping-pong pod ↔ pod, and new connections/s through a hostPort from h2.

const (
	debianCNIDir = "/usr/lib/cni"
	cniFabricNet = "cnibench"      // fabric network of the fabric-cni pods
	cniFabricSub = "10.86.0.0/24"  // its subnet (no other section uses it: a full run keeps the macvlan network 10.78.0.0/24)
	cniRefSub    = "10.87.0.0/24"  // host-local's range for the bridge chain
	hpCNIFabric  = 9180            // hostPort → fabric-cni pod :8000
	hpCNIRef     = 9181            // hostPort → bridge-chain pod :8000 (portmap)
	cniVersion   = "1.0.0"         // Debian's plugins speak ≤ 1.0.0
	cniRefBridge = "cnibr0"        // the bridge plugin's bridge in h1
	cniAddWarmup = 1               // first ADD of each way not counted
	cniAddLimit  = 2 * time.Minute // one ADD or DEL at most
)

// cniWay is one CNI network configuration under test.
type cniWay struct {
	name string
	list *libcni.NetworkConfigList
	pods []cniPod
}

type cniPod struct {
	short, path, ip string
	rt              *libcni.RuntimeConf
}

// cniConfigs builds the two network configuration lists.
func (l *Lab) cniConfigs() (fabric, ref *libcni.NetworkConfigList, err error) {
	fab, err := json.Marshal(map[string]any{"cniVersion": cniVersion, "name": "fabric-bench", "plugins": []any{
		map[string]any{"type": "fabric-cni", "network": cniFabricNet, "socket": l.socket,
			"capabilities": map[string]bool{"portMappings": true}},
	}})
	if err != nil {
		return nil, nil, err
	}
	refb, err := json.Marshal(map[string]any{"cniVersion": cniVersion, "name": "bridge-bench", "plugins": []any{
		map[string]any{"type": "bridge", "bridge": cniRefBridge, "isGateway": true, "ipMasq": true,
			"ipam": map[string]any{"type": "host-local", "subnet": cniRefSub, "dataDir": filepath.Join(l.dir, "host-local"),
				"routes": []map[string]string{{"dst": "0.0.0.0/0"}}}},
		map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "snat": true},
	}})
	if err != nil {
		return nil, nil, err
	}
	if fabric, err = libcni.ConfListFromBytes(fab); err != nil {
		return nil, nil, err
	}
	ref, err = libcni.ConfListFromBytes(refb)
	return fabric, ref, err
}

// cniPluginPath is a plugin dir with fabric-cni and Debian's plugins.
func (l *Lab) cniPluginPath() ([]string, error) {
	bin := filepath.Join(l.o.bin, "fabric-cni")
	if st, err := os.Stat(bin); err != nil || st.IsDir() {
		return nil, fmt.Errorf("%s not found (make build builds it)", bin)
	}
	for _, p := range []string{"bridge", "host-local", "portmap"} {
		if _, err := os.Stat(filepath.Join(debianCNIDir, p)); err != nil {
			return nil, fmt.Errorf("%s/%s not found (make deps-cni installs containernetworking-plugins)", debianCNIDir, p)
		}
	}
	return []string{l.o.bin, debianCNIDir}, nil
}

// inH1 runs fn on a thread in h1, so that the plugins libcni starts run
// there (they inherit the thread's namespace).
func (l *Lab) inH1(fn func() error) error { return netns.Do(l.nsPath("h1"), fn) }

// cniAdd attaches a new pod namespace short through way and returns the
// time libcni's ADD took.
func (l *Lab) cniAdd(ctx context.Context, cfg *libcni.CNIConfig, way *cniWay, short string, ports []map[string]any) (time.Duration, error) {
	if err := l.addNS(short); err != nil {
		return 0, err
	}
	pod := cniPod{short: short, path: l.nsPath(short)}
	pod.rt = &libcni.RuntimeConf{ContainerID: l.ns(short), NetNS: pod.path, IfName: "eth0"}
	if len(ports) > 0 {
		pod.rt.CapabilityArgs = map[string]any{"portMappings": ports}
	}
	var took time.Duration
	err := l.inH1(func() error {
		actx, cancel := context.WithTimeout(ctx, cniAddLimit)
		defer cancel()
		t0 := time.Now()
		res, err := cfg.AddNetworkList(actx, way.list, pod.rt)
		took = time.Since(t0)
		if err != nil {
			return err
		}
		r, err := types100.NewResultFromResult(res)
		if err != nil {
			return fmt.Errorf("CNI result: %w", err)
		}
		if len(r.IPs) == 0 {
			return errors.New("CNI result without an address")
		}
		pod.ip = r.IPs[0].Address.IP.String()
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("%s ADD %s: %w", way.name, short, err)
	}
	way.pods = append(way.pods, pod)
	return took, nil
}

// cniDelAll removes every pod of the way (DEL through libcni).
func (l *Lab) cniDelAll(ctx context.Context, cfg *libcni.CNIConfig, way *cniWay) []float64 {
	var times []float64
	for _, p := range way.pods {
		_ = l.inH1(func() error {
			dctx, cancel := context.WithTimeout(ctx, cniAddLimit)
			defer cancel()
			t0 := time.Now()
			err := cfg.DelNetworkList(dctx, way.list, p.rt)
			if err == nil {
				times = append(times, ms(time.Since(t0)))
			} else {
				fmt.Fprintf(os.Stderr, "  cni: %s DEL %s: %v\n", way.name, p.short, err)
			}
			return err
		})
	}
	way.pods = nil
	return times
}

// sectionCNI: ADD time, pod ↔ pod TCP, hostPort connections/s; fabric-cni
// against bridge + host-local (+ portmap).
func (l *Lab) sectionCNI(ctx context.Context) error {
	if s := l.fabricSkip(); s != "" {
		return fmt.Errorf("fabric unavailable: %s", s)
	}
	path, err := l.cniPluginPath()
	if err != nil {
		return err
	}
	fabList, refList, err := l.cniConfigs()
	if err != nil {
		return err
	}
	if _, err := l.client.CreateNetwork(ctx, api.NetworkCreate{Name: cniFabricNet, Subnet: cniFabricSub}); err != nil {
		return fmt.Errorf("create fabric network %s: %w", cniFabricNet, err)
	}
	cfg := libcni.NewCNIConfigWithCacheDir(path, filepath.Join(l.dir, "cni-cache"), nil)
	fab := &cniWay{name: "fabric-cni", list: fabList}
	ref := &cniWay{name: "bridge+host-local+portmap", list: refList}
	defer func() {
		l.cniDelAll(context.WithoutCancel(ctx), cfg, fab)
		l.cniDelAll(context.WithoutCancel(ctx), cfg, ref)
	}()
	adds, err := l.cniAddTimes(ctx, cfg, fab, ref)
	if err != nil {
		return err
	}
	dels := map[*cniWay][]float64{fab: l.cniDelAll(ctx, cfg, fab), ref: l.cniDelAll(ctx, cfg, ref)}
	printCNIAdd(l.o.setupN, []*cniWay{ref, fab}, adds, dels)
	return l.cniTraffic(ctx, cfg, fab, ref)
}

// cniAddTimes adds setupN pods through each way, alternating, and returns
// the ADD times in ms (the warm-up ones left out).
func (l *Lab) cniAddTimes(ctx context.Context, cfg *libcni.CNIConfig, ways ...*cniWay) (map[*cniWay][]float64, error) {
	out := map[*cniWay][]float64{}
	for i := 0; i < l.o.setupN+cniAddWarmup; i++ {
		for wi, w := range ways {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			fmt.Fprintf(os.Stderr, "  cni: ADD %d/%d: %s\n", i+1, l.o.setupN+cniAddWarmup, w.name)
			took, err := l.cniAdd(ctx, cfg, w, fmt.Sprintf("cn%d-%d", wi, i), nil)
			if err != nil {
				return nil, err
			}
			if i >= cniAddWarmup {
				out[w] = append(out[w], ms(took))
			}
		}
	}
	return out, nil
}

func printCNIAdd(n int, ways []*cniWay, adds, dels map[*cniWay][]float64) {
	var rows []*result
	for _, w := range ways {
		rows = append(rows, &result{spec: spec{name: w.name}, vals: map[string][]float64{
			"p50": {percentile(adds[w], 50)}, "p90": {percentile(adds[w], 90)}, "max": {percentile(adds[w], 100)},
			"del": {percentile(dels[w], 50)},
		}})
	}
	inv := func(k string) column {
		return column{"× faster than ref", func(r *result) string {
			a, b := r.med(k), rows[0].med(k)
			if r == rows[0] {
				return "1.00× (ref)"
			}
			if a == 0 || a != a || b != b {
				return "–"
			}
			return fmt.Sprintf("%.2f×", b/a)
		}}
	}
	printTable(fmt.Sprintf("cni: ADD through libcni from h1 (ms), n=%d each, alternating, no ports asked", n),
		[]column{{"ADD p50", msCell("p50")}, {"ADD p90", msCell("p90")}, {"ADD max", msCell("max")}, inv("p50"), {"DEL p50", msCell("del")}},
		rows, "each ADD execs the chain's plugins (fabric-cni asks fabricd over its socket); DESIGN.md's reference: bridge + host-local ADD p50 126 ms (cnitool, another run).")
}

// cniTraffic attaches two pods per way (one serving, with a hostPort) and
// measures pod ↔ pod TCP and hostPort new connections/s from h2.
func (l *Lab) cniTraffic(ctx context.Context, cfg *libcni.CNIConfig, fab, ref *cniWay) error {
	for _, w := range []struct {
		way    *cniWay
		prefix string
		hp     int
	}{{fab, "cf", hpCNIFabric}, {ref, "cr", hpCNIRef}} {
		ports := []map[string]any{{"hostPort": w.hp, "containerPort": portHTTP, "protocol": "tcp"}}
		if _, err := l.cniAdd(ctx, cfg, w.way, w.prefix+"a", ports); err != nil {
			return err
		}
		if _, err := l.cniAdd(ctx, cfg, w.way, w.prefix+"b", nil); err != nil {
			return err
		}
		for _, p := range w.way.pods {
			if _, err := l.startIn(ctx, "serve-"+p.short, p.path, l.self, serveArg); err != nil {
				return err
			}
			if err := waitListen(ctx, p.path, 10*time.Second, portPerf, portLat, portHTTP); err != nil {
				return fmt.Errorf("servers in %s: %w", p.short, err)
			}
		}
	}
	specs := []spec{
		{name: "bridge+host-local pod → pod (ref)", fn: l.throughputLatency(ref.pods[0].path, ref.pods[1].ip)},
		{name: "fabric-cni pod → pod", fn: l.throughputLatency(fab.pods[0].path, fab.pods[1].ip)},
	}
	res := runAlternating(ctx, "cni", l.secs(), l.o.reps, specs)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	printTable(fmt.Sprintf("cni: pod → pod, one TCP stream (iperf3) and TCP ping-pong (sockperf, one-way µs), %d s, median of %d", l.secs(), l.o.reps),
		l.withRange([]column{
			valCol("Gbit/s", "gbps", "%.2f"), ratioCol("× ref", "gbps", res[0]),
			valCol("p50 µs", "p50", "%.1f"), ratioCol("p50 × ref", "p50", res[0]),
		}, rangeCol("Gbit/s min–max", "gbps", "%.2f")), res)
	h2 := l.nsPath("h2")
	rate := func(port int) func(context.Context, int) (map[string]float64, error) {
		url := fmt.Sprintf("http://%s/", net.JoinHostPort(h1IP, fmt.Sprint(port)))
		return func(ctx context.Context, secs int) (map[string]float64, error) {
			r, err := l.wrk(ctx, h2, url, secs)
			if err != nil {
				return nil, err
			}
			return map[string]float64{"rps": r.rps}, nil
		}
	}
	res = runAlternating(ctx, "cni", l.secs(), l.o.reps, []spec{
		{name: fmt.Sprintf("portmap, h2 → h1:%d (ref)", hpCNIRef), fn: rate(hpCNIRef)},
		{name: fmt.Sprintf("fabric-cni portMappings, h2 → h1:%d", hpCNIFabric), fn: rate(hpCNIFabric)},
	})
	if ctx.Err() != nil {
		return ctx.Err()
	}
	printTable(fmt.Sprintf("cni: new connections/s through a hostPort → pod:%d (wrk, one request per connection), %d s, median of %d", portHTTP, l.secs(), l.o.reps),
		l.withRange([]column{valCol("conn/s", "rps", "%.0f"), ratioCol("× portmap", "rps", res[0])},
			rangeCol("conn/s min–max", "rps", "%.0f")), res)
	return nil
}
