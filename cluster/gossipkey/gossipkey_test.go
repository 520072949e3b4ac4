package gossipkey

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestGenerate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gossip.key")
	if err := Generate(path, false); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %04o, want 0600", fi.Mode().Perm())
	}
	keys, err := Load(path)
	if err != nil || len(keys) != 1 || len(keys[0]) != 32 {
		t.Fatalf("Load = %d keys, %v", len(keys), err)
	}
	// Never overwritten by accident.
	err = Generate(path, false)
	if !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), "--force") {
		t.Errorf("second Generate = %v, want ErrExist mentioning --force", err)
	}
	if again, _ := Load(path); !bytes.Equal(again[0], keys[0]) {
		t.Error("refused Generate changed the key")
	}
	// --force replaces the key and tightens a loose mode.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Generate(path, true); err != nil {
		t.Fatal(err)
	}
	fresh, err := Load(path)
	if err != nil || bytes.Equal(fresh[0], keys[0]) {
		t.Fatalf("forced Generate: same key or %v", err)
	}
	// Two keys are never the same.
	other := filepath.Join(filepath.Dir(path), "other.key")
	if err := Generate(other, false); err != nil {
		t.Fatal(err)
	}
	if k2, _ := Load(other); bytes.Equal(k2[0], fresh[0]) {
		t.Error("two generated keys are equal")
	}
}

func TestLoadRefusesLooseMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gossip.key")
	if err := Generate(path, false); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []fs.FileMode{0o640, 0o604, 0o620, 0o602, 0o644, 0o666} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := Load(path)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("mode %04o: %v, want ErrInvalid naming the file and chmod 600", mode, err)
		}
	}
	for _, mode := range []fs.FileMode{0o600, 0o400} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(path); err != nil {
			t.Errorf("mode %04o refused: %v", mode, err)
		}
	}
}

func TestIdentity(t *testing.T) {
	path := filepath.Join(t.TempDir(), "identity.key")
	k1, err := LoadOrCreateIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity file: %v %v", fi, err)
	}
	k2, err := LoadOrCreateIdentity(path)
	if err != nil || !k1.Equal(k2) {
		t.Fatalf("second load: different key or %v", err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateIdentity(path); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("loose mode: %v", err)
	}
	if err := os.WriteFile(path, []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateIdentity(path); !errors.Is(err, ErrInvalid) {
		t.Errorf("junk: %v", err)
	}
}

// TestLoadRefusesLargeFiles: a key file or identity file past its size
// bound is refused as invalid, not read whole.
func TestLoadRefusesLargeFiles(t *testing.T) {
	dir := t.TempDir()
	big := []byte(strings.Repeat("# padding\n", maxFileBytes/10+1))
	keyFile := filepath.Join(dir, "gossip.key")
	if err := os.WriteFile(keyFile, big, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(keyFile); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("Load of a %d-byte file: %v, want ErrInvalid (too large)", len(big), err)
	}
	idFile := filepath.Join(dir, "identity.key")
	if err := os.WriteFile(idFile, big[:2048], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateIdentity(idFile); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("identity of 2048 bytes: %v, want ErrInvalid (too large)", err)
	}
}
