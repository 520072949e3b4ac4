package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// The kernel-datapath contrast: a third host namespace k1, joined to h2 by
// a veth of its own (u3 in k1, u4 in h2), with a fabricd started with
// `--datapath kernel` and two sandboxes ka (publishing the same ports as
// fa) and kb, both running the server helper. A host of its own because
// two agents in one namespace would fight over the default bridge and the
// host's nftables; h2 reaches k1's published ports over u4 as it reaches
// h1's over u2.
const (
	k1IP = "192.168.251.1"
	k2IP = "192.168.251.2" // h2's end of the k1 link
)

// kernelHost is the k1 agent and what runs on it. err says why it is
// unavailable (its rows are then "n/a" with the reason).
type kernelHost struct {
	err      error
	agent    *proc
	client   *api.Client
	datapath string // as the agent reports it ("kernel")
	kaNS     string
	kbIP     string

	sandboxes tracked // made on k1 and not removed yet
	downOnce  sync.Once
}

// kernelHost returns the k1 agent, setting it up on first use.
func (l *Lab) kernelHost(ctx context.Context) *kernelHost {
	if l.kh != nil {
		return l.kh
	}
	kh := &kernelHost{}
	l.kh = kh
	if kh.err = l.setupKernelHost(ctx, kh); kh.err != nil {
		fmt.Fprintf(os.Stderr, "  kernel-datapath agent on k1 unavailable: %v\n", kh.err)
	}
	return kh
}

func (l *Lab) setupKernelHost(ctx context.Context, kh *kernelHost) error {
	if err := l.addNS("k1"); err != nil {
		return err
	}
	// Registered before anything runs on k1: the agent is stopped and its
	// pins removed before the generic cleanup deletes the namespaces.
	l.atCleanup(func() { l.kernelHostDown(kh) })
	k1, h2 := l.ns("k1"), l.ns("h2")
	if err := l.subnetFreeOnH2(ctx, k2IP+"/24"); err != nil {
		return err
	}
	for _, s := range [][]string{
		{"link", "add", "u3", "netns", k1, "type", "veth", "peer", "name", "u4", "netns", h2},
		{"-n", k1, "addr", "add", k1IP + "/24", "dev", "u3"},
		{"-n", k1, "link", "set", "u3", "up"},
		{"-n", h2, "addr", "add", k2IP + "/24", "dev", "u4"},
		{"-n", h2, "link", "set", "u4", "up"},
	} {
		if _, err := runCmd(ctx, 10*time.Second, "ip", s...); err != nil {
			return err
		}
	}
	// The set-up timing pings sandboxes from k1 through an ICMP socket.
	if err := l.sysctl(ctx, l.nsPath("k1"), "net.ipv4.ping_group_range=0 2147483647"); err != nil {
		return err
	}
	p, client, _, _, err := l.startAgent(ctx, "k1", "--datapath", "kernel")
	if err != nil {
		return fmt.Errorf("fabricd --datapath kernel on k1: %w", err)
	}
	kh.agent, kh.client = p, client
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := client.Status(sctx)
	if err != nil {
		return fmt.Errorf("k1 agent status: %w", err)
	}
	kh.datapath = st.Datapath
	serve := []string{l.self, serveArg}
	ka, err := kh.create(sctx, api.SandboxCreate{Name: l.ns("ka"), Command: serve,
		Ports: []string{fmt.Sprintf("%d:%d", hpFabric, portPerf), fmt.Sprintf("%d:%d", hpFabHTTP, portHTTP)}})
	if err != nil {
		return err
	}
	kb, err := kh.create(sctx, api.SandboxCreate{Name: l.ns("kb"), Command: serve})
	if err != nil {
		return err
	}
	kh.kaNS = ka.NetNS
	if kh.kbIP, err = sandboxIP(kb); err != nil {
		return err
	}
	return waitServers(ctx, ka, kb)
}

// skip says why k1's rows cannot run ("" when they can).
func (kh *kernelHost) skip() string {
	if kh.err != nil {
		return "kernel-datapath agent unavailable: " + lastLines(kh.err.Error(), 1)
	}
	return ""
}

// create makes a sandbox on k1 and records it for removal.
func (kh *kernelHost) create(ctx context.Context, req api.SandboxCreate) (api.Sandbox, error) {
	kh.track(req.Name)
	return kh.client.CreateSandbox(ctx, req)
}

func (kh *kernelHost) track(name string)   { kh.sandboxes.add(name) }
func (kh *kernelHost) untrack(name string) { kh.sandboxes.remove(name) }

// kernelHostDown removes k1's sandboxes through its API (bounded to 30 s;
// what is left goes with the namespaces in the generic cleanup), stops the
// agent and removes its pins.
func (l *Lab) kernelHostDown(kh *kernelHost) {
	kh.downOnce.Do(func() {
		defer func() { _ = os.RemoveAll(l.bpfRoot("k1")) }()
		if kh.agent == nil {
			return
		}
		kh.sandboxes.removeAll(kh.client, kh.agent, " on k1")
		kh.agent.stop(10 * time.Second)
	})
}
