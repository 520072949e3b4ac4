package dns

import "sync"

// minShare is the number of forwards a sandbox may always have waiting,
// however many sandboxes forward at once.
const minShare = 4

// shares divides the MaxInflight forwarding slots fairly among sandboxes:
// a sandbox may have at most max(minShare, MaxInflight/(n+1)) forwards
// waiting, where n is the number of sandboxes with forwards waiting
// (itself included). The +1 keeps a share free for a sandbox that starts
// asking while others flood a silent upstream: without it one sandbox
// could hold every slot and every other sandbox would get SERVFAIL.
type shares struct {
	mu      sync.Mutex
	waiting map[string]int // sandbox → forwards it has waiting
}

// take reserves a slot for sandbox if it is under its share.
func (sh *shares) take(sandbox string, total int) bool {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.waiting == nil {
		sh.waiting = make(map[string]int)
	}
	mine := sh.waiting[sandbox]
	n := len(sh.waiting)
	if mine == 0 {
		n++
	}
	if mine >= max(minShare, total/(n+1)) {
		return false
	}
	sh.waiting[sandbox] = mine + 1
	return true
}

// give returns a slot taken by take.
func (sh *shares) give(sandbox string) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.waiting[sandbox] <= 1 {
		delete(sh.waiting, sandbox)
		return
	}
	sh.waiting[sandbox]--
}

// SetForwarding says whether sandbox may have names forwarded upstream. A
// sandbox only on internal networks must not: forwarding would be a way
// out of a network that has none (DNS exfiltration). Its queries for
// names outside its networks get REFUSED at once; names of its networks
// still resolve. Sandboxes never set may forward.
func (s *Server) SetForwarding(sandbox string, allowed bool) {
	if allowed {
		s.denied.Delete(sandbox)
		return
	}
	s.denied.Store(sandbox, struct{}{})
}

func (s *Server) noForward(sandbox string) bool {
	_, denied := s.denied.Load(sandbox)
	return denied
}

// Forwarding reports whether sandbox may have names forwarded upstream.
func (s *Server) Forwarding(sandbox string) bool { return !s.noForward(sandbox) }
