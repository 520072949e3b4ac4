package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/agent/agentstate"
	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/store"
	"github.com/fabricnet/fabric/datapath/netns"
)

// ResetSandboxes is the agent's part of `fabricd reset`, for an agent that
// is not running: every sandbox command in the records is stopped, and
// every namespace fabric made for a sandbox is removed with its
// /etc/netns entry (the veths, macvlan children and DNS sockets in it go
// with it). Namespaces wired in by path are someone else's and stay. The
// records stay, so a restarted agent re-creates the networks; the caller
// removes the state directory for a clean slate.
func ResetSandboxes(stateDir string, log *slog.Logger) (removed int, err error) {
	if _, err := os.Stat(filepath.Join(stateDir, agentstate.FileName)); errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	st, err := store.Open(filepath.Join(stateDir, agentstate.FileName),
		[]string{bucketNetworks, bucketSandboxes, bucketEndpoints, bucketCluster}, 2*time.Second)
	if err != nil {
		return 0, fmt.Errorf("open state (is fabricd still running?): %w", err)
	}
	defer st.Close()
	var sbs []sandboxRec
	if err := st.View(func(tx *store.Tx) (err error) {
		sbs, err = store.List[sandboxRec](tx, bucketSandboxes)
		return err
	}); err != nil {
		return 0, fmt.Errorf("read sandboxes: %w", err)
	}
	p := &processes{}
	var errs []error
	for _, sb := range sbs {
		if sb.PID > 0 && !sb.Exited {
			nsPath := sb.NetNS
			if sb.Mode == api.ModeHost {
				nsPath = "/proc/self/ns/net" // reset runs where the agent ran
			}
			if err := p.stop(sb.PID, sb.PIDStart, 5*time.Second, !sb.ClientPID, nsPath); err != nil {
				errs = append(errs, fmt.Errorf("stop command of sandbox %s: %w", sb.Name, err))
			}
		}
		// A create cut short: its command may run unrecorded.
		if n, err := killUnrecorded(&sb); err != nil {
			errs = append(errs, fmt.Errorf("stop the commands of unfinished sandbox %s: %w", sb.Name, err))
		} else if n > 0 {
			log.Info("stopped processes left in the namespace of an unfinished sandbox", "sandbox", sb.Name, "processes", n)
		}
		if sb.Mode == api.ModeExternal && filepath.Dir(sb.NetNS) == filepath.Join(stateDir, "netns") {
			// The agent's reference to a namespace it did not make: drop
			// the bind mount, never the namespace (its owner keeps it).
			releaseHeld(sb.NetNS)
			continue
		}
		if sb.Mode != api.ModeNetNS && sb.Mode != api.ModeNone {
			continue
		}
		name, ok := agentstate.OwnNamespace(sb.NetNS)
		if !ok {
			continue
		}
		if err := netns.DeleteNamed(name); err != nil {
			errs = append(errs, fmt.Errorf("remove namespace of sandbox %s: %w", sb.Name, err))
			continue
		}
		if err := os.RemoveAll(filepath.Join(netns.EtcDir, name)); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", filepath.Join(netns.EtcDir, name), err))
		}
		removed++
		log.Info("removed sandbox namespace", "sandbox", sb.Name, "netns", sb.NetNS)
	}
	return removed, errors.Join(errs...)
}

// nsName is the name of the namespace of a new sandbox called name.
func (a *Agent) nsName(name string) string { return a.opts.NetNSPrefix + name }

// sandboxNSName is the name of a sandbox's own namespace, taken from its
// record, so that a sandbox made under another prefix keeps its namespace.
func sandboxNSName(sb *sandboxRec) string {
	if name, ok := agentstate.OwnNamespace(sb.NetNS); ok {
		return name
	}
	return sb.Name
}
