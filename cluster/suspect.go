package cluster

import (
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// Suspicion as this node sees it. memberlist keeps a member's suspect state
// in its private records: the Node values memberlist.Members returns carry
// a State field it never writes (its own state field shadows it), and
// reading those records after the call returns races with memberlist's
// writes. So this node keeps its own set, under memMu like the member
// list: a member enters it when this node's probe of it gets no ack
// (memberlist only logs that), and leaves it when a later probe is acked,
// or when memberlist reports it joined, updated, failed or left.

// suspectLine is memberlist's log line for a probe without any ack; the
// node's name sits between the prefix and the suffix.
const (
	suspectLinePrefix = "memberlist: Suspect "
	suspectLineSuffix = " has failed, no acks received"
)

// noteSuspectLine marks the member named in a memberlist "no acks" line.
func (c *Cluster) noteSuspectLine(line string) {
	rest, ok := strings.CutPrefix(line, suspectLinePrefix)
	if !ok {
		return
	}
	name, ok := strings.CutSuffix(rest, suspectLineSuffix)
	if !ok || name == c.cfg.NodeName {
		return
	}
	c.memMu.Lock()
	if m := c.members[name]; m != nil && m.State == MemberAlive {
		c.suspected[name] = struct{}{}
	}
	c.memMu.Unlock()
}

// clearSuspectLocked forgets a suspicion; the caller holds memMu.
func (c *Cluster) clearSuspectLocked(name string) { delete(c.suspected, name) }

// numSuspect counts the members this node suspects right now.
func (c *Cluster) numSuspect() int {
	c.memMu.Lock()
	defer c.memMu.Unlock()
	return len(c.suspected)
}

// pingDelegate hears of every acked probe: the member answered.
type pingDelegate struct{ c *Cluster }

var _ memberlist.PingDelegate = (*pingDelegate)(nil)

func (d *pingDelegate) AckPayload() []byte { return nil }

func (d *pingDelegate) NotifyPingComplete(other *memberlist.Node, _ time.Duration, _ []byte) {
	name := other.Name // copied at once: memberlist goes on writing *other
	d.c.memMu.Lock()
	d.c.clearSuspectLocked(name)
	d.c.memMu.Unlock()
}
