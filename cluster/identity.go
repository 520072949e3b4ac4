package cluster

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/hashicorp/memberlist"
)

// Sender identity.
//
// The gossip key (memberlist's keyring) keeps everyone without it out:
// nothing a non-member sends decrypts. It does not tell members apart: any
// keyholder could send a message that names another member as its sender,
// and memberlist's user messages do not say which member sent them (they
// may be relayed, and NotifyMsg gets no address). So every member also
// has an ed25519 identity key; the public half travels in its NodeMeta.
//
//   - Direct messages (requests: claims, votes' aborts, proposals, key
//     operations; responses: votes and proposal answers) and leave intents
//     are signed by their sender. A receiver verifies the signature with
//     the public key of the member the message names (From, or the leaving
//     node), as this node knows it from memberlist; a message naming a node
//     that is not a live member here, or whose signature does not verify,
//     is dropped and counted. So a vote, a promise or a leave can only come
//     from the member it names, and a response is only accepted from the
//     member the request went to (rpc.go).
//   - Replies go to the requester's memberlist address, never to an
//     address named in the message (requests carry none).
//   - The binding of a name to a key is first come: an alive message that
//     changes the key of a member that is alive here is refused
//     (aliveDelegate), so a member cannot take over another's name while
//     it lives. A node that restarts keeps its key (the agent stores it in
//     its state directory); one with a new key is accepted once the old
//     incarnation has failed or left.
//   - Records (endpoints, leases, claims, networks) are replicated by
//     every member and relayed through push/pull, so their sender is not
//     their author; records are checked by what they say instead: live
//     records only by their owner (the decoder), bounded clocks and caps
//     (limits.go), and network creates that never displace an accepted
//     network of a live creator (state.go).

// signedDomain separates these signatures from any other use of the key.
const signedDomain = "fabric-gossip-v2\x00"

// sigSize is the size of an ed25519 signature, appended to signed messages.
const sigSize = ed25519.SignatureSize

// newIdentity returns key, or a fresh one when key is nil.
func newIdentity(key ed25519.PrivateKey) (ed25519.PrivateKey, error) {
	if key != nil {
		if len(key) != ed25519.PrivateKeySize {
			return nil, fmt.Errorf("%w: identity key is %d bytes, want %d", ErrInvalid, len(key), ed25519.PrivateKeySize)
		}
		return key, nil
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate identity key: %w", err)
	}
	return priv, nil
}

// signed returns msg (encoded with a zero signature) with its signature.
func (c *Cluster) sign(msg []byte) []byte {
	body := msg[:len(msg)-sigSize]
	copy(msg[len(msg)-sigSize:], ed25519.Sign(c.identity, signedBytes(body)))
	return msg
}

func signedBytes(body []byte) []byte {
	return append([]byte(signedDomain), body...)
}

// verify checks that m (a signed message) was signed by the member named
// name, and returns that member's memberlist node, to reply to. The member
// must be alive here, except for a leave intent (anyState), which may
// arrive after the leaving node was declared failed.
func (c *Cluster) verify(name string, m message, anyState bool) (memberlist.Node, string) {
	c.memMu.Lock()
	mem := c.members[name]
	var cp Member
	if mem != nil {
		cp = *mem
	}
	c.memMu.Unlock()
	if mem == nil || (cp.State != MemberAlive && !anyState) || name == c.cfg.NodeName {
		return memberlist.Node{}, dropNotMember
	}
	if !ed25519.Verify(ed25519.PublicKey(cp.Meta.Identity[:]), signedBytes(m.signed), m.sig) {
		return memberlist.Node{}, dropBadSignature
	}
	return memberlist.Node{Name: cp.Name, Addr: cp.Addr.Addr().AsSlice(), Port: cp.Addr.Port()}, ""
}

// newRequestID returns an unpredictable request ID, so that nobody can
// answer a request it has not seen.
func newRequestID() uint64 {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // never fails on Linux
	}
	return binary.LittleEndian.Uint64(b[:])
}

// identityKey is this node's public identity key.
func (c *Cluster) identityKey() (k [32]byte) {
	copy(k[:], c.identity.Public().(ed25519.PublicKey))
	return k
}

// onMemberlistLine sees every memberlist log line. It counts what
// memberlist drops before the package sees it: packets and streams that do
// not decrypt with the keyring (a sender without the key, or with another)
// or are not encrypted at all; and notes the members a probe found silent
// (suspect.go). memberlist only logs these.
func (c *Cluster) onMemberlistLine(line string) {
	if strings.Contains(line, "Decrypt packet failed") || keyMismatch(errors.New(line)) {
		c.stats.drop(dropUndecryptable)
	}
	c.noteSuspectLine(line)
}

// signedRecordDomain separates record signatures from message signatures.
const signedRecordDomain = "fabric-record-v2\x00"

func recordSigned(r record) []byte {
	e := encoder{buf: append(make([]byte, 0, 160), signedRecordDomain...)}
	e.recordBody(r)
	return e.buf
}

// signRecord signs a record this node writes.
func (c *Cluster) signRecord(r *record) {
	*r.sig() = ed25519.Sign(c.identity, recordSigned(*r))
}

// memberKey returns the identity key of a node this node knows, alive or
// gone (members are remembered for a while after they go).
func (c *Cluster) memberKey(name string) (ed25519.PublicKey, bool) {
	if name == c.cfg.NodeName {
		return c.identity.Public().(ed25519.PublicKey), true
	}
	c.memMu.Lock()
	defer c.memMu.Unlock()
	m := c.members[name]
	if m == nil {
		return nil, false
	}
	return ed25519.PublicKey(bytes.Clone(m.Meta.Identity[:])), true
}

// authRecord checks a record's signature against its writer's key.
func (c *Cluster) authRecord(r record) authResult {
	pub, ok := c.memberKey(r.writer())
	if !ok {
		return authUnknown
	}
	if sig := *r.sig(); len(sig) != sigSize || !ed25519.Verify(pub, recordSigned(r), sig) {
		return authBad
	}
	return authOK
}

// applyRemote merges records received from others (gossip, a response,
// a push/pull, a snapshot). Signatures are checked without the state lock
// and only for the records that would change something, so a push/pull of
// a state this node already has costs a comparison per record.
func (c *Cluster) applyRemote(clock uint64, rs []record, rebroadcast bool) {
	var cands []int
	c.mu.Lock()
	for i, r := range rs {
		if c.st.newer(r) {
			cands = append(cands, i)
		}
	}
	c.mu.Unlock()
	if len(cands) == 0 && clock == 0 {
		return
	}
	keep := make([]record, 0, len(cands))
	auth := make([]authResult, 0, len(cands))
	for _, i := range cands {
		keep = append(keep, rs[i])
		auth = append(auth, c.authRecord(rs[i]))
	}
	_ = c.locked(func(s *state) error {
		if rebroadcast {
			for i, r := range keep {
				s.remote(r, true, auth[i])
			}
			if clock != 0 {
				s.merge(clock, nil, nil)
			}
			return nil
		}
		s.merge(clock, keep, auth)
		return nil
	})
}
