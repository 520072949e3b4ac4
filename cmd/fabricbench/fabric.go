package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// setupFabric starts a fabricd in h1 (only the network namespace switched,
// an empty config so the host's /etc/fabric is ignored) and the sandboxes
// fa (publishing 9080->5201 and 9081->8000) and fb, both running the
// fabricbench server helper.
func (l *Lab) setupFabric(ctx context.Context) error {
	fabricd := filepath.Join(l.o.bin, "fabricd")
	for _, b := range []string{fabricd, l.fabricctl()} {
		if st, err := os.Stat(b); err != nil || st.IsDir() {
			return fmt.Errorf("%s not found (build it with `make build`, or point -bin at it)", b)
		}
	}
	p, client, socket, warnings, err := l.startAgent(ctx, "h1")
	if err != nil {
		return err
	}
	l.agent, l.client, l.socket, l.fabricWarnings = p, client, socket, warnings
	serve := []string{l.self, serveArg}
	fa, err := l.fabricRun(ctx, []string{"--name", l.ns("fa"),
		"-p", fmt.Sprintf("%d:%d", hpFabric, portPerf), "-p", fmt.Sprintf("%d:%d", hpFabHTTP, portHTTP)}, serve)
	if err != nil {
		return err
	}
	fb, err := l.fabricRun(ctx, []string{"--name", l.ns("fb")}, serve)
	if err != nil {
		return err
	}
	l.faNS, l.fbNS = fa.NetNS, fb.NetNS
	if l.faIP, err = sandboxIP(fa); err != nil {
		return err
	}
	if l.fbIP, err = sandboxIP(fb); err != nil {
		return err
	}
	return waitServers(ctx, fa, fb)
}

// waitServers waits up to 10 s for the benchmark servers (iperf3,
// sockperf, HTTP) to listen in each sandbox.
func waitServers(ctx context.Context, sbs ...api.Sandbox) error {
	for _, sb := range sbs {
		if err := waitListen(ctx, sb.NetNS, 10*time.Second, portPerf, portLat, portHTTP); err != nil {
			return fmt.Errorf("servers in sandbox %s: %w (log %s)", sb.Name, err, sb.LogPath)
		}
	}
	return nil
}

// startAgent runs a fabricd in host namespace short (only the network
// namespace switched, an empty config so the host's /etc/fabric is
// ignored) and waits until it answers. extra flags come after
// -fabricd-flags, so they win (the kernel-datapath agent on k1).
func (l *Lab) startAgent(ctx context.Context, short string, extra ...string) (p *proc, client *api.Client, socket string, warnings []string, err error) {
	fabricd := filepath.Join(l.o.bin, "fabricd")
	cfg := filepath.Join(l.dir, "fabric.yaml")
	if err := os.WriteFile(cfg, nil, 0o644); err != nil {
		return nil, nil, "", nil, err
	}
	socket = filepath.Join(l.dir, short+"-fabricd.sock")
	args := []string{"nsenter", "--net=" + l.nsPath(short), fabricd,
		"--state-dir", filepath.Join(l.dir, short+"-state"), "--socket", socket,
		// own pins, removed by cleanupFabric: never the host's /sys/fs/bpf/fabric
		"--bpf-root", l.bpfRoot(short),
		"--node-name", l.ns(short), "--config", cfg,
		// never forward a sandbox's DNS query out of the lab
		"--dns-upstreams", dnsUpstream,
		// the lab hosts have no default route: name the underlay veth
		"--uplink", map[string]string{"h1": "u1", "h2": "u2", "k1": "u3"}[short]}
	args = append(args, strings.Fields(l.o.fabricArg)...)
	args = append(args, extra...)
	p, err = l.startProc(ctx, "fabricd-"+short, nil, args...)
	if err != nil {
		return nil, nil, "", nil, err
	}
	client = api.NewClient(socket)
	deadline := time.Now().Add(20 * time.Second)
	for {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := client.Status(sctx)
		cancel()
		if err == nil {
			return p, client, socket, st.Warnings, nil
		}
		select {
		case <-p.done:
			return nil, nil, "", nil, fmt.Errorf("fabricd exited at start%s", p.tail())
		case <-ctx.Done():
			return nil, nil, "", nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, nil, "", nil, fmt.Errorf("fabricd not answering on %s after 20 s: %w%s", socket, err, p.tail())
		}
	}
}

// bpfRoot is where the agent of host short pins its eBPF objects.
func (l *Lab) bpfRoot(short string) string { return "/sys/fs/bpf/" + l.ns(short) }

func (l *Lab) fabricctl() string { return filepath.Join(l.o.bin, "fabricctl") }

// fabricRun runs `fabricctl -o json run -d FLAGS -- CMD...` and returns the
// sandbox (from the JSON it prints, else from `sandbox inspect`).
func (l *Lab) fabricRun(ctx context.Context, flags, command []string) (api.Sandbox, error) {
	return l.fabricRunOn(ctx, l.socket, flags, command)
}

// fabricRunOn is fabricRun against the agent at socket. Only sandboxes of
// the h1 agent are tracked for removal through its API; the others go with
// their namespaces in the generic cleanup.
func (l *Lab) fabricRunOn(ctx context.Context, socket string, flags, command []string) (api.Sandbox, error) {
	name := ""
	for i, f := range flags {
		if f == "--name" && i+1 < len(flags) {
			name = flags[i+1]
		}
	}
	if socket == l.socket {
		l.trackSandbox(name)
	}
	args := append([]string{"--socket", socket, "-o", "json", "run", "-d"}, flags...)
	args = append(append(args, "--"), command...)
	out, err := runCmd(ctx, 30*time.Second, l.fabricctl(), args...)
	if err != nil {
		return api.Sandbox{}, err
	}
	if sb, err := parseSandbox(out); err == nil && sb.NetNS != "" {
		return sb, nil
	}
	return l.inspect(ctx, socket, name)
}

func (l *Lab) inspect(ctx context.Context, socket, name string) (api.Sandbox, error) {
	out, err := runCmd(ctx, 10*time.Second, l.fabricctl(), "--socket", socket, "sandbox", "inspect", name)
	if err != nil {
		return api.Sandbox{}, err
	}
	return parseSandbox(out)
}

// parseSandbox accepts a sandbox as a JSON object or a one-element array.
func parseSandbox(out string) (api.Sandbox, error) {
	var sb api.Sandbox
	out = strings.TrimSpace(out)
	if strings.HasPrefix(out, "[") {
		var list []api.Sandbox
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			return sb, fmt.Errorf("parse sandbox JSON: %w", err)
		}
		if len(list) == 0 {
			return sb, errors.New("sandbox inspect printed an empty list")
		}
		return list[0], nil
	}
	if err := json.Unmarshal([]byte(out), &sb); err != nil {
		return sb, fmt.Errorf("parse sandbox JSON: %w (output %q)", err, lastLines(out, 2))
	}
	return sb, nil
}

// sandboxIP returns the address of the sandbox's first endpoint.
func sandboxIP(sb api.Sandbox) (string, error) {
	if sb.NetNS == "" {
		return "", fmt.Errorf("sandbox %s has no namespace path", sb.Name)
	}
	for _, ep := range sb.Endpoints {
		if p, err := netip.ParsePrefix(ep.IP); err == nil {
			return p.Addr().String(), nil
		}
		if a, err := netip.ParseAddr(ep.IP); err == nil {
			return a.String(), nil
		}
	}
	return "", fmt.Errorf("sandbox %s has no endpoint address", sb.Name)
}

func (l *Lab) trackSandbox(name string)   { l.sandboxes.add(name) }
func (l *Lab) untrackSandbox(name string) { l.sandboxes.remove(name) }

// cleanupFabric removes the sandboxes still recorded (bounded to 30 s in
// all), then stops the agent. Leftover sandbox processes and namespaces are
// handled by the generic cleanup.
func (l *Lab) cleanupFabric() {
	defer func() {
		// After the agents are gone: unpinning detaches their programs.
		for _, short := range []string{"h1", "h2"} {
			_ = os.RemoveAll(l.bpfRoot(short))
		}
	}()
	if l.client != nil && l.agent != nil {
		l.sandboxes.removeAll(l.client, l.agent, "")
	}
	if l.agent != nil {
		l.agent.stop(10 * time.Second)
	}
}

// fabricSkip says why a fabric row cannot run ("" when it can).
func (l *Lab) fabricSkip() string {
	if l.fabricErr != nil {
		return "fabric unavailable"
	}
	return ""
}
