package ebpf

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/fabricnet/fabric/bpf"
)

// ensureBPFFS makes root, which must be on a bpffs. If root is under
// /sys/fs/bpf and nothing is mounted there (no systemd to do it), a bpffs is
// mounted first.
func ensureBPFFS(root string) error {
	if isUnder(root, "/sys/fs/bpf") && isBPFFS("/sys/fs/bpf") != nil {
		if err := os.MkdirAll("/sys/fs/bpf", 0o755); err != nil {
			return unsupported("create /sys/fs/bpf", err)
		}
		if err := unix.Mount("bpffs", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
			return unsupported("mount bpffs on /sys/fs/bpf", err)
		}
	}
	for _, sub := range []string{"maps", "links"} {
		if err := os.MkdirAll(filepath.Join(root, sub), 0o700); err != nil {
			return unsupported("create bpf root "+root, err)
		}
	}
	if err := isBPFFS(root); err != nil {
		return unsupported("bpf root "+root, err)
	}
	return nil
}

func isBPFFS(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", path, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("%s is not on a bpf filesystem", path)
	}
	return nil
}

func isUnder(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// loadPinned loads the programs (spec) with the maps pinned under root,
// pinning the ones that were not. A map whose pinned layout no longer
// matches (a new build changed it, or its size option) is recreated on its
// own, so that an upgrade that changes the counters keeps the connection
// table; Sync refills what the agent owns.
func loadPinned(log *slog.Logger, root string, spec *ebpf.CollectionSpec) (*bpf.Objects, int, error) {
	names, err := bpf.MapNames()
	if err != nil {
		return nil, 0, err
	}
	dir := filepath.Join(root, "maps")
	repl := map[string]*ebpf.Map{}
	defer func() {
		for _, m := range repl {
			m.Close()
		}
	}()
	for _, name := range names {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			log.Warn("cannot open pinned map; recreating it", "map", name, "err", err)
			_ = os.Remove(filepath.Join(dir, name))
			continue
		}
		if ms, ok := spec.Maps[name]; ok {
			if err := ms.Compatible(m); err != nil {
				log.Warn("pinned map does not match this build's layout; recreating it", "map", name, "err", err)
				m.Close()
				_ = os.Remove(filepath.Join(dir, name))
				continue
			}
		}
		repl[name] = m
	}
	objs, err := bpf.LoadSpec(spec, &ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil && len(repl) > 0 && errors.Is(err, ebpf.ErrMapIncompatible) {
		log.Warn("pinned maps do not match this build's layout; recreating them", "err", err)
		for name, m := range repl {
			m.Close()
			delete(repl, name)
			_ = os.Remove(filepath.Join(dir, name))
		}
		objs, err = bpf.LoadSpec(spec, nil)
	}
	if err != nil {
		return nil, 0, classifyLoad("endpoint programs", err)
	}
	for name, m := range objs.Maps() {
		if _, ok := repl[name]; ok {
			continue
		}
		p := filepath.Join(dir, name)
		_ = os.Remove(p) // a stale pin of an incompatible map
		if err := m.Pin(p); err != nil {
			objs.Close()
			return nil, 0, fmt.Errorf("pin map %s: %w", p, err)
		}
	}
	return objs, len(repl), nil
}
