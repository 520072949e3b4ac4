package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/fabricnet/fabric/cluster/gossipkey"
	"github.com/hashicorp/memberlist"
)

// LoadKeyFile reads gossip keys (see package gossipkey): one base64 key
// of 16, 24 or 32 bytes per line, the first the primary, used to encrypt;
// all of them are tried to decrypt, which is what lets keys be rotated
// without downtime. A file that group or others may read is refused.
func LoadKeyFile(path string) ([][]byte, error) {
	keys, err := gossipkey.Load(path)
	if errors.Is(err, gossipkey.ErrInvalid) {
		return nil, invalidKeyFile{err}
	}
	return keys, err
}

// invalidKeyFile is gossipkey's error, also matching ErrInvalid, with
// gossipkey's message alone.
type invalidKeyFile struct{ err error }

func (e invalidKeyFile) Error() string   { return e.err.Error() }
func (e invalidKeyFile) Unwrap() []error { return []error{ErrInvalid, e.err} }

func validKeyLen(n int) error { return gossipkey.ValidLen(n) }

// Keys returns the local keyring, primary first.
func (c *Cluster) Keys() [][]byte {
	if c.keyring == nil {
		return nil
	}
	primary := c.keyring.GetPrimaryKey()
	keys := [][]byte{primary}
	for _, k := range c.keyring.GetKeys() {
		if !bytes.Equal(k, primary) {
			keys = append(keys, k)
		}
	}
	return keys
}

// InstallKey adds a key to the keyring of every member. Rotation is
// InstallKey(new), UseKey(new), RemoveKey(old): each step leaves every pair
// of members with a key in common, so the cluster stays connected. A member
// that is down during a rotation keeps its old keys and cannot rejoin once
// the old key is removed; give it the new key file.
func (c *Cluster) InstallKey(ctx context.Context, key []byte) error {
	return c.keyOp(ctx, opKeyInstall, key)
}

// UseKey makes an installed key the primary (the one that encrypts) on every
// member.
func (c *Cluster) UseKey(ctx context.Context, key []byte) error {
	return c.keyOp(ctx, opKeyUse, key)
}

// RemoveKey removes a key from every member. The primary cannot be removed.
func (c *Cluster) RemoveKey(ctx context.Context, key []byte) error {
	return c.keyOp(ctx, opKeyRemove, key)
}

func (c *Cluster) keyOp(ctx context.Context, op opCode, key []byte) error {
	if c.keyring == nil {
		return fmt.Errorf("%w: gossip encryption is not configured (no secret keys)", ErrInvalid)
	}
	if err := validKeyLen(len(key)); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := c.applyKeyOp(op, key); err != nil {
		return err
	}
	resps, missing := c.call(ctx, c.peers(), request{Op: op, Key: key})
	var failed []string
	for _, r := range resps {
		if !r.OK {
			failed = append(failed, r.From+": "+r.Reason)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%w: key %s refused by %s", ErrInvalid, opName(op), strings.Join(failed, "; "))
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: key %s not confirmed by %s; retry", ErrUnreachable, opName(op), strings.Join(missing, ", "))
	}
	return nil
}

func opName(op opCode) string {
	switch op {
	case opKeyInstall:
		return "install"
	case opKeyUse:
		return "use"
	case opKeyRemove:
		return "remove"
	}
	return "op"
}

// applyKeyOp changes the local keyring. Every op is idempotent, so a
// retried rotation converges.
func (c *Cluster) applyKeyOp(op opCode, key []byte) error {
	if c.keyring == nil {
		return fmt.Errorf("%w: gossip encryption is not configured", ErrInvalid)
	}
	var err error
	switch op {
	case opKeyInstall:
		err = c.keyring.AddKey(key)
	case opKeyUse:
		err = c.keyring.UseKey(key)
	case opKeyRemove:
		if bytes.Equal(c.keyring.GetPrimaryKey(), key) {
			return fmt.Errorf("%w: cannot remove the primary key; use another key first", ErrInUse)
		}
		err = removeKey(c.keyring, key)
	}
	if err != nil {
		return fmt.Errorf("%w: key %s: %w", ErrInvalid, opName(op), err)
	}
	c.log.Info("gossip keyring changed", "op", opName(op), "keys", len(c.keyring.GetKeys()))
	return nil
}

// keyMismatch recognises memberlist's decryption errors in a join error.
func keyMismatch(err error) bool {
	if err == nil {
		return false
	}
	s := err.Error()
	for _, pat := range []string{
		"no installed keys could decrypt",
		"encryption is not configured",
		"remote state is not encrypted",
		"cannot decrypt",
		"payload is too small to decrypt",
	} {
		if strings.Contains(s, pat) {
			return true
		}
	}
	return false
}

// removeKey removes a non-primary key. memberlist's Keyring.RemoveKey
// shifts the later keys down inside the slice that GetKeys has handed to
// concurrent decrypts (a data race) unless the key is the last one; the
// other operations build a new slice. So first move the key to the end:
// UseKey(x) puts x first and keeps the others in order, so using every key
// after it, then the primary again, leaves it last. In the usual rotation
// (install new, use new, remove old) the old key already is last and the
// primary never changes here; otherwise a few packets may briefly go out
// under another installed key, which members lacking it drop and gossip
// retransmits.
func removeKey(kr *memberlist.Keyring, key []byte) error {
	keys := kr.GetKeys()
	idx := slices.IndexFunc(keys, func(k []byte) bool { return bytes.Equal(k, key) })
	if idx < 0 {
		return nil
	}
	primary := keys[0]
	if idx != len(keys)-1 {
		for _, k := range slices.Clone(keys[idx+1:]) {
			if err := kr.UseKey(k); err != nil {
				return err
			}
		}
		if err := kr.UseKey(primary); err != nil {
			return err
		}
	}
	return kr.RemoveKey(key)
}
