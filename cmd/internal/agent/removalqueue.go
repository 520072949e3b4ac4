package agent

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath"
)

// removalQueueInterval is how often a running agent looks for removals
// queued while it could not be reached.
const removalQueueInterval = 2 * time.Second

// drainRemovalQueue carries out every queued removal (see
// api.QueueRemoval). Called with a.mu held.
func (a *Agent) drainRemovalQueue(ctx context.Context) {
	if a.opts.Socket == "" {
		return
	}
	dir := api.RemovalQueueDir(a.opts.Socket)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return // no queue: nothing was ever queued
	}
	for _, e := range ents {
		if name, ok := strings.CutSuffix(e.Name(), ".json"); ok && !strings.HasPrefix(name, ".") {
			a.drainDelQueueFor(ctx, name)
		}
	}
}

// drainDelQueueFor carries out the removal queued for sandbox name, if
// any. The file goes once the removal is done (or nothing is left to do);
// a removal that fails stays queued for the next round.
func (a *Agent) drainDelQueueFor(ctx context.Context, name string) {
	if a.opts.Socket == "" {
		return
	}
	path := filepath.Join(api.RemovalQueueDir(a.opts.Socket), name+".json")
	fi, err := os.Lstat(path)
	if err != nil {
		return
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || !fi.Mode().IsRegular() || int(st.Uid) != os.Geteuid() {
		a.log.Warn("queued removal ignored: not a regular file of the agent's user", "file", path)
		return
	}
	b, err := os.ReadFile(path)
	var q api.QueuedRemoval
	if err == nil {
		err = json.Unmarshal(b, &q)
	}
	if err != nil || q.Sandbox != name {
		a.log.Warn("queued removal dropped: unreadable", "file", path, "err", err)
		os.Remove(path)
		return
	}
	sb := a.sandboxes[name]
	if sb != nil && sb.Owner == q.Owner && sb.ContainerID == q.ContainerID {
		if err := a.removeSandboxLocked(ctx, sb); err != nil {
			a.log.Warn("queued removal failed; kept for the next round", "sandbox", name, "err", err)
			return
		}
		a.log.Info("queued removal done", "sandbox", name, "owner", q.Owner, "container", q.ContainerID, "queued", q.Queued)
	}
	os.Remove(path)
}

// watchRemovalQueue drains the queue every interval until ctx ends.
func (a *Agent) watchRemovalQueue(ctx context.Context, interval time.Duration) {
	datapath.Every(ctx, interval, func() {
		a.mu.Lock()
		a.drainRemovalQueue(ctx)
		a.mu.Unlock()
	})
}
