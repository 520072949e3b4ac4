// Package gossipkey reads and writes the files that hold the cluster's
// gossip keys: one base64 key of 16, 24 or 32 bytes (AES-128/192/256) per
// line, primary first; and a node's own identity key. It is separate from package cluster so that
// fabricctl can make a key without linking the gossip library.
package gossipkey

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// ErrInvalid: the file is unsafe (readable by others) or does not hold
// valid keys.
var ErrInvalid = errors.New("invalid gossip key file")

// maxFileBytes bounds what is read: a key file is a few lines.
const maxFileBytes = 64 << 10

// Generate writes a fresh random 32-byte key, base64, to path with mode
// 0600. An existing file is refused (the error wraps fs.ErrExist) unless
// force is set, so a key in use is never overwritten by accident.
func Generate(path string, force bool) error {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("generate gossip key: %w", err)
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("gossip key file %s exists already; --force replaces it (agents using it then need the new key): %w", path, err)
		}
		return fmt.Errorf("write gossip key file: %w", err)
	}
	// An existing file keeps its mode under O_TRUNC: tighten it first.
	if err := f.Chmod(0o600); err != nil {
		_ = f.Close()
		return fmt.Errorf("write gossip key file: %w", err)
	}
	_, werr := f.WriteString(base64.StdEncoding.EncodeToString(key) + "\n")
	if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
		return fmt.Errorf("write gossip key file %s: %w", path, err)
	}
	return nil
}

// Load reads the keys of a key file; blank lines and lines starting with
// '#' are skipped. A file that group or others may read or write is
// refused: whoever reads the key can join the cluster and rewrite it.
func Load(path string) ([][]byte, error) {
	data, err := readPrivate(path, "gossip key file", maxFileBytes)
	if err != nil {
		return nil, err
	}
	return parse(path, data)
}

// readPrivate reads the file at path, what in errors, which must be at
// most max bytes and readable and writable by its owner only. A missing
// file is an error that is fs.ErrNotExist.
func readPrivate(path, what string, max int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s %s has mode %04o: group or others may read or write it; run `chmod 600 %s`",
			ErrInvalid, what, path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, int64(max)+1))
	if err != nil {
		return nil, fmt.Errorf("read %s %s: %w", what, path, err)
	}
	if len(data) > max {
		return nil, fmt.Errorf("%w: %s %s is larger than %d bytes", ErrInvalid, what, path, max)
	}
	return data, nil
}

func parse(path string, data []byte) ([][]byte, error) {
	var keys [][]byte
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		key, err := base64.StdEncoding.DecodeString(text)
		if err != nil {
			return nil, fmt.Errorf("%w: %s line %d: not base64 (make a key with `fabricctl cluster key generate FILE`)", ErrInvalid, path, line)
		}
		if err := ValidLen(len(key)); err != nil {
			return nil, fmt.Errorf("%w: %s line %d: %w", ErrInvalid, path, line, err)
		}
		for _, k := range keys {
			if bytes.Equal(k, key) {
				return nil, fmt.Errorf("%w: %s line %d: duplicate key", ErrInvalid, path, line)
			}
		}
		keys = append(keys, key)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalid, path, err)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: %s holds no key (make one with `fabricctl cluster key generate FILE`)", ErrInvalid, path)
	}
	return keys, nil
}

// ValidLen checks a key length: 16, 24 or 32 bytes.
func ValidLen(n int) error {
	switch n {
	case 16, 24, 32:
		return nil
	}
	return fmt.Errorf("key is %d bytes, must be 16, 24 or 32", n)
}

// LoadOrCreateIdentity returns the node's ed25519 identity key stored in
// path (the base64 seed, mode 0600), creating it on first use. The agent
// keeps it in its state directory: a node that comes back with the same
// key is recognised at once; one with a new key only after the others saw
// the old one fail.
func LoadOrCreateIdentity(path string) (ed25519.PrivateKey, error) {
	data, err := readPrivate(path, "identity key", 1024)
	if errors.Is(err, fs.ErrNotExist) {
		return createIdentity(path)
	}
	if err != nil {
		return nil, err
	}
	seed, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data)))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("%w: identity key %s does not hold a base64 %d-byte seed; remove it to make a new one", ErrInvalid, path, ed25519.SeedSize)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

func createIdentity(path string) (ed25519.PrivateKey, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate identity key: %w", err)
	}
	tmp := path + ".tmp"
	data := base64.StdEncoding.EncodeToString(key.Seed()) + "\n"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		return nil, fmt.Errorf("write identity key: %w", err)
	}
	// Rename, so a crash never leaves a half-written key behind.
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return nil, fmt.Errorf("write identity key: %w", err)
	}
	return key, nil
}
