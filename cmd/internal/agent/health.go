package agent

import (
	"fmt"
	"maps"
	"sync"
	"time"
)

// health holds what `fabricctl status` and the metrics report besides the
// records: warnings that last until the agent stops, networks that are
// unhealthy (a missing macvlan/ipvlan parent, a cluster network removed
// under its users), one-off cluster events, and the reconcile counts. It
// has its own lock, never held across a call out of it, so status and
// metrics read it while the agent lock is held by a slow change.
type health struct {
	mu        sync.Mutex
	warnings  []string
	unhealthy map[string]string // network ID → why
	events    []eventWarning    // one-off cluster events, shown for eventWarningTTL
	rec       reconcileStats
}

func newHealth() *health { return &health{unhealthy: map[string]string{}} }

// warn adds a warning that lasts until the agent stops.
func (h *health) warn(w string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.warnings = append(h.warnings, w)
}

// lasting returns the warnings that last until the agent stops.
func (h *health) lasting() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.warnings...)
}

// setUnhealthy marks network id unhealthy and says whether it was already.
func (h *health) setUnhealthy(id, why string) (was bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, was = h.unhealthy[id]
	h.unhealthy[id] = why
	return was
}

// clearUnhealthy marks network id healthy.
func (h *health) clearUnhealthy(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.unhealthy, id)
}

// unhealthyWhy says whether network id is unhealthy, and why.
func (h *health) unhealthyWhy(id string) (string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	why, bad := h.unhealthy[id]
	return why, bad
}

// unhealthyNetworks returns network ID → why, a copy.
func (h *health) unhealthyNetworks() map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return maps.Clone(h.unhealthy)
}

// eventWarningTTL is how long a one-off cluster event (a lost create
// conflict, a lease taken away) stays among the status warnings. It is
// something to look at, not a lasting condition: without an end it would
// keep `fabricctl status` degraded until the agent restarts.
const eventWarningTTL = 15 * time.Minute

type eventWarning struct {
	at  time.Time
	msg string
}

// noteEvent adds a one-off event to the status warnings for
// eventWarningTTL. The same message again restarts its time.
func (h *health) noteEvent(msg string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	kept := h.events[:0]
	for _, e := range h.events {
		if e.msg != msg && now.Sub(e.at) < eventWarningTTL {
			kept = append(kept, e)
		}
	}
	h.events = append(kept, eventWarning{at: now, msg: msg})
}

// eventWarnings are the events younger than eventWarningTTL at now, each
// with the time it happened.
func (h *health) eventWarnings(now time.Time) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, e := range h.events {
		if now.Sub(e.at) < eventWarningTTL {
			out = append(out, fmt.Sprintf("%s (at %s)", e.msg, e.at.UTC().Format(time.RFC3339)))
		}
	}
	return out
}

// reconcileStats counts reconciles for the metrics.
type reconcileStats struct {
	runs, errors uint64
	last         time.Duration
	lastSuccess  time.Time
}

// recordReconcile counts one reconcile that took took and ended with err.
func (h *health) recordReconcile(took time.Duration, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rec.runs++
	h.rec.last = took
	if err != nil {
		h.rec.errors++
		return
	}
	h.rec.lastSuccess = time.Now()
}

// reconciles returns the reconcile counts.
func (h *health) reconciles() reconcileStats {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.rec
}
