package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/agent/agentstate"
	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath/netns"
)

// Bounds of Down's waits.
var (
	// StopGrace is how long agents get to exit after SIGTERM before SIGKILL.
	StopGrace = 10 * time.Second
	// lockWait is how long Down waits for a running Up or Down.
	lockWait = 30 * time.Second
	// sandboxRemoveTimeout bounds each agent's removal of its sandboxes.
	sandboxRemoveTimeout = 60 * time.Second
)

// DownReport says what Down removed and what it could not.
type DownReport struct {
	Name    string   `json:"name"`
	Removed []string `json:"removed"`
	// Notes are problems Down worked around (an agent that did not answer,
	// so its sandboxes were found in its state file instead).
	Notes []string `json:"notes,omitempty"`
	// Failed are objects that are still there; the manifest is kept so
	// that another Down can try again.
	Failed []string `json:"failed,omitempty"`
}

func (r *DownReport) removed(format string, args ...any) {
	r.Removed = append(r.Removed, fmt.Sprintf(format, args...))
}

func (r *DownReport) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

func (r *DownReport) fail(format string, args ...any) {
	r.Failed = append(r.Failed, fmt.Sprintf(format, args...))
}

// Down removes the named lab and everything it made, in this order: the
// sandboxes the agents made (through each agent's API while it answers),
// the agents (SIGTERM, SIGKILL after StopGrace), sandbox namespaces that
// a dead agent's state file still lists, every process left in the lab's
// namespaces, the namespaces, the bpffs directories and the lab directory.
//
// Every step tolerates objects that are already gone, so Down works after
// a crash of Up, of the agents, or of Down itself, and twice in a row. A
// lab that does not exist gives ErrNotFound. If something cannot be
// removed, Down goes on with the rest, keeps the manifest and returns an
// error naming what is left.
func Down(ctx context.Context, root, name string, progress func(string)) (*DownReport, error) {
	if progress == nil {
		progress = func(string) {}
	}
	if root == "" {
		root = DefaultRoot
	}
	if err := ValidName(name); err != nil {
		return nil, err
	}
	rep := &DownReport{Name: name, Removed: []string{}}
	dir := filepath.Join(root, name)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return rep, fmt.Errorf("%w: %s (nothing at %s)", ErrNotFound, name, dir)
	}
	unlock, err := lockDir(dir, lockWait)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) { // removed by a Down we waited for
			return rep, fmt.Errorf("%w: %s (nothing at %s)", ErrNotFound, name, dir)
		}
		return rep, err
	}
	defer unlock()
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) { // removed by a Down we waited for
		return rep, fmt.Errorf("%w: %s (nothing at %s)", ErrNotFound, name, dir)
	}
	m, err := Load(root, name)
	switch {
	case errors.Is(err, ErrNotFound):
		// Up died before it wrote the manifest, so before it made anything.
		if err := os.RemoveAll(dir); err != nil {
			return rep, fmt.Errorf("remove %s: %w", dir, err)
		}
		rep.removed("directory %s", dir)
		return rep, nil
	case err != nil:
		return rep, fmt.Errorf("%w; nothing was removed", err)
	}

	m.State = StateRemoving
	if err := m.save(); err != nil {
		rep.note("could not mark the manifest as removing: %v", err)
	}
	removeSandboxesViaAPI(ctx, m, rep, progress)
	stopAgents(m, rep, progress)
	removeLeftoverSandboxes(m, rep, progress)
	removeNamespaces(m, rep, progress)
	removeBPFRoots(m, rep)
	if len(rep.Failed) > 0 {
		return rep, fmt.Errorf("lab %s is not completely removed; still there: %s (the manifest %s is kept: run lab down again)",
			name, strings.Join(rep.Failed, "; "), filepath.Join(dir, ManifestFile))
	}
	if err := os.RemoveAll(dir); err != nil {
		return rep, fmt.Errorf("remove %s: %w", dir, err)
	}
	rep.removed("directory %s", dir)
	return rep, nil
}

// removeSandboxesViaAPI asks every agent that answers to remove its
// sandboxes, which stops their commands and removes their namespaces and
// resolv.conf files the way the agent made them. Agents work in parallel.
func removeSandboxesViaAPI(ctx context.Context, m *Manifest, rep *DownReport, progress func(string)) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range m.Nodes {
		if _, err := os.Stat(n.Socket); err != nil {
			continue // no agent has served here since the last start
		}
		wg.Go(func() {
			removed, notes := removeNodeSandboxes(ctx, n)
			mu.Lock()
			defer mu.Unlock()
			for _, sb := range removed {
				progress(fmt.Sprintf("node %s: removed sandbox %s", n.ID, sb))
				rep.removed("sandbox %s (node %s)", sb, n.ID)
			}
			rep.Notes = append(rep.Notes, notes...)
		})
	}
	wg.Wait()
}

func removeNodeSandboxes(ctx context.Context, n Node) (removed, notes []string) {
	ctx, cancel := context.WithTimeout(ctx, sandboxRemoveTimeout)
	defer cancel()
	cl := api.NewClient(n.Socket)
	lctx, lcancel := context.WithTimeout(ctx, statusTimeout)
	sbs, err := cl.Sandboxes(lctx)
	lcancel()
	if err != nil {
		return nil, []string{fmt.Sprintf("node %s: could not list sandboxes through the API (%v); looking in its state file instead", n.ID, err)}
	}
	// Sandboxes that share another's namespace (container:NAME) go first.
	sort.SliceStable(sbs, func(i, j int) bool {
		return sbs[i].Mode == api.ModeContainer && sbs[j].Mode != api.ModeContainer
	})
	for _, sb := range sbs {
		if err := cl.RemoveSandbox(ctx, sb.Name); err != nil && !isNotFound(err) {
			notes = append(notes, fmt.Sprintf("node %s: remove sandbox %s through the API: %v", n.ID, sb.Name, err))
			continue
		}
		removed = append(removed, sb.Name)
	}
	return removed, notes
}

func isNotFound(err error) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Code == api.CodeNotFound
}

// stopAgents ends every node's agent: any fabricd serving the node's
// socket, so one whose PID was never recorded goes too.
func stopAgents(m *Manifest, rep *DownReport, progress func(string)) {
	var all []int
	owner := map[int]string{}
	for _, n := range m.Nodes {
		for _, pid := range agentPIDs(m.Fabricd, n) {
			all = append(all, pid)
			owner[pid] = n.ID
		}
	}
	if len(all) == 0 {
		return
	}
	progress(fmt.Sprintf("stopping %d agent(s)", len(all)))
	err := stopProcesses(all, StopGrace)
	for _, pid := range all {
		if running(pid) {
			continue
		}
		rep.removed("fabricd %d (node %s)", pid, owner[pid])
	}
	if err != nil {
		rep.fail("agents: %v", err)
	}
}

// removeLeftoverSandboxes removes the sandbox namespaces the (now stopped)
// agents' state files list and that are still there: what a dead or
// unresponsive agent could not remove. Namespaces fabric did not make
// (external ones, connected by path) are never touched.
func removeLeftoverSandboxes(m *Manifest, rep *DownReport, progress func(string)) {
	seen := map[string]bool{}
	for _, n := range m.Nodes {
		names, err := agentstate.MadeNamespaces(n.StateDir)
		if err != nil {
			rep.note("node %s: %v; sandboxes it made that are still there must be removed by hand", n.ID, err)
			continue
		}
		for _, name := range names {
			if seen[name] || !netns.IsNamespace(netns.Path(name)) {
				continue
			}
			seen[name] = true
			if foreign := foreignLinks(m, netns.Path(name)); foreign != "" {
				rep.note("namespace %s: left alone: node %s's records name it, but it has %s, which is not in the lab", name, n.ID, foreign)
				continue
			}
			progress(fmt.Sprintf("node %s: removing leftover sandbox namespace %s", n.ID, name))
			if err := removeNamespace(name); err != nil {
				rep.fail("sandbox namespace %s: %v", name, err)
				continue
			}
			if err := os.RemoveAll(filepath.Join(netns.EtcDir, name)); err != nil {
				rep.fail("%s: %v", filepath.Join(netns.EtcDir, name), err)
			}
			rep.removed("sandbox namespace %s (node %s)", name, n.ID)
		}
	}
}

// foreignLinks describes the first interface in the namespace at path
// whose other end (veth peer, macvlan parent) is in a namespace outside
// the lab, or returns "" if there is none. A sandbox of the lab has its
// ends in a node's namespace, or none at all once the node is gone; a
// namespace of the same name made by someone else would not.
func foreignLinks(m *Manifest, path string) string {
	h, err := netns.HandleAt(path)
	if err != nil {
		return ""
	}
	defer h.Close()
	ours := map[int]bool{}
	nsPaths := []string{netns.Path(m.Underlay.NetNS)}
	for _, n := range m.Nodes {
		nsPaths = append(nsPaths, n.NetNSPath())
	}
	for _, p := range nsPaths {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		if id, err := h.GetNetNsIdByFd(int(f.Fd())); err == nil && id >= 0 {
			ours[id] = true
		}
		f.Close()
	}
	links, err := h.LinkList()
	if err != nil {
		return ""
	}
	for _, l := range links {
		if a := l.Attrs(); a.NetNsID >= 0 && !ours[a.NetNsID] {
			return fmt.Sprintf("interface %s linked to namespace id %d", a.Name, a.NetNsID)
		}
	}
	return ""
}

// removeNamespaces removes the node and underlay namespaces with every
// process still in them (sandbox commands in host mode, lab exec shells).
func removeNamespaces(m *Manifest, rep *DownReport, progress func(string)) {
	names := make([]string, 0, len(m.Nodes)+1)
	for _, n := range m.Nodes {
		names = append(names, n.NetNS)
	}
	names = append(names, m.Underlay.NetNS)
	for _, name := range names {
		if _, err := os.Lstat(netns.Path(name)); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		progress("removing namespace " + name)
		if err := removeNamespace(name); err != nil {
			rep.fail("namespace %s: %v", name, err)
			continue
		}
		rep.removed("namespace %s", name)
	}
}

// removeNamespace kills the processes in a named namespace and deletes it.
func removeNamespace(name string) error {
	if procs := processesIn(netns.Path(name)); len(procs) > 0 {
		if err := killProcesses(procs); err != nil {
			return err
		}
	}
	return netns.DeleteNamed(name)
}

// removeBPFRoots unpins everything the agents pinned, which detaches their
// programs and frees their maps. Only directories under BPFDir named like
// a lab's are touched, whatever the manifest says.
func removeBPFRoots(m *Manifest, rep *DownReport) {
	for _, n := range m.Nodes {
		want := filepath.Join(BPFDir, "fabric-lab-"+m.Name+"-"+n.ID)
		if filepath.Clean(n.BPFRoot) != want {
			rep.fail("bpf root %s: not %s as a lab's must be; left alone", n.BPFRoot, want)
			continue
		}
		if _, err := os.Lstat(want); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err := os.RemoveAll(want); err != nil {
			rep.fail("bpf root %s: %v", want, err)
			continue
		}
		rep.removed("bpf root %s", want)
	}
}
