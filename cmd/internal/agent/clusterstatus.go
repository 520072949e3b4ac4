package agent

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/fabricnet/fabric/cluster"
	"github.com/fabricnet/fabric/cmd/internal/api"
)

// clusterStatus describes the cluster for `fabricctl status`. It takes no
// agent lock: what it reads of the agent's side is in clusterGlue.
func (a *Agent) clusterStatus() *api.ClusterStatus {
	if a.cl == nil {
		return nil
	}
	st := &api.ClusterStatus{Node: a.cl.Name(), Gossip: a.cl.Addr().String(), Tunnel: a.opts.Tunnel.Local.String()}
	if a.opts.Tunnel.Port != 0 {
		st.Tunnel += ":" + strconv.Itoa(int(a.opts.Tunnel.Port))
	}
	a.addMembers(st)
	s := a.cl.Stats()
	st.Alive = a.cl.NumAlive()
	st.Suspect = s.Suspect
	st.Encrypted = a.cl.Encrypted()
	if !s.LastFullSync.IsZero() {
		st.LastFullSync = s.LastFullSync.UTC().Format(time.RFC3339)
	}
	if err := a.cl.JoinError(); err != nil && st.Alive <= 1 {
		st.Problems = append(st.Problems, fmt.Sprintf("not joined to the cluster: %v", err))
	}
	if s.Suspect > 0 {
		st.Problems = append(st.Problems, fmt.Sprintf("%d cluster member(s) suspected of failure", s.Suspect))
	}
	st.MessagesSent, st.MessagesReceived, st.SendErrors = s.MessagesSent, s.MessagesReceived, s.SendErrors
	for _, v := range s.Dropped {
		st.MessagesDropped += v
	}
	st.Networks = len(a.cl.Networks())
	names, whys := a.glue.unhealthyNetworks()
	for i, name := range names {
		st.Problems = append(st.Problems, fmt.Sprintf("overlay network %q not set up here: %s", name, whys[i]))
	}
	sort.Strings(st.Problems)
	return st
}

// addMembers lists the members in st, with their endpoint counts and the
// last probe of each peer; a peer that does not answer is a problem.
func (a *Agent) addMembers(st *api.ClusterStatus) {
	counts := map[string]int{}
	for _, ep := range a.cl.Endpoints("") {
		counts[ep.Node]++
	}
	for _, m := range a.cl.Members() {
		am := api.Member{
			Name: m.Name, Addr: m.Meta.Addr.String(), Gossip: m.Addr.String(), State: m.State.String(),
			Datapath: m.Meta.Datapath, Version: m.Meta.Version, Endpoints: counts[m.Name],
			Since: m.Since.UTC().Format(time.RFC3339), Reachable: m.State == cluster.MemberAlive,
		}
		if p, ok := a.glue.probe(m.Name); ok && m.Name != st.Node {
			am.Reachable = !p.unanswered()
			switch {
			case p.unanswered():
				am.Probe = fmt.Sprintf("no answer to %d probes in a row: %v", p.missed, p.err)
				st.Problems = append(st.Problems, fmt.Sprintf("cluster member %s is alive but left this node's last %d probes over the underlay unanswered (%v)", m.Name, p.missed, p.err))
			case p.err != nil:
				am.Probe = fmt.Sprintf("last probe unanswered (%d in a row; a problem from %d): %v", p.missed, probeProblemAfter, p.err)
			default:
				am.Probe = p.rtt.Round(time.Microsecond).String()
			}
		}
		st.Members = append(st.Members, am)
	}
}

// Keys lists the gossip keys by fingerprint, primary first.
func (a *Agent) Keys() ([]api.Key, error) {
	if a.cl == nil {
		return nil, invalidf("this agent is not in a cluster")
	}
	keys := a.cl.Keys()
	if keys == nil {
		return nil, invalidf("gossip is not encrypted: start every agent with --cluster-secret-file to use keys")
	}
	out := make([]api.Key, 0, len(keys))
	for i, k := range keys {
		out = append(out, api.Key{Fingerprint: keyFingerprint(k), Primary: i == 0})
	}
	return out, nil
}

func keyFingerprint(k []byte) string {
	sum := sha256.Sum256(k)
	return hex.EncodeToString(sum[:8])
}

// KeyOp runs one step of a gossip key rotation on every member: install a
// new key everywhere, use it (it encrypts from then on), remove the old.
func (a *Agent) KeyOp(ctx context.Context, req api.KeyOp) error {
	if a.cl == nil {
		return invalidf("this agent is not in a cluster")
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(req.Key))
	if err != nil {
		return invalidf("key is not base64: %v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	switch req.Op {
	case "install":
		err = a.cl.InstallKey(ctx, key)
	case "use":
		err = a.cl.UseKey(ctx, key)
	case "remove":
		err = a.cl.RemoveKey(ctx, key)
	default:
		return invalidf("key operation %q: want install, use or remove", req.Op)
	}
	if err != nil {
		return clusterErr(fmt.Errorf("key %s: %w", req.Op, err))
	}
	a.log.Info("gossip key "+req.Op, "fingerprint", keyFingerprint(key))
	return nil
}
