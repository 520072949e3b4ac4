package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// needTools skips the test unless every command is installed.
func needTools(t *testing.T, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("skipping: needs %s (make deps-cni installs the CNI runtimes and tools)", c)
		}
	}
}

// tinyImage builds the test image offline, as a `docker save` archive
// (what `ctr images import` and `podman load` take): one layer with the
// static tinyimg binary at /pause, tagged ref.
func tinyImage(t *testing.T, ref string) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "pause")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, "./testdata/tinyimg")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build tinyimg: %v\n%s", err, out)
	}
	exe, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	var layer bytes.Buffer
	lw := tar.NewWriter(&layer)
	must(t, lw.WriteHeader(&tar.Header{Name: "pause", Mode: 0o755, Size: int64(len(exe)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}))
	_, err = lw.Write(exe)
	must(t, err)
	must(t, lw.Close())
	layerSum := sha256.Sum256(layer.Bytes())
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Entrypoint": []string{"/pause"}, "Env": []string{"PATH=/"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + hex.EncodeToString(layerSum[:])}},
	})
	must(t, err)
	configSum := sha256.Sum256(config)
	configName := hex.EncodeToString(configSum[:]) + ".json"
	layerName := hex.EncodeToString(layerSum[:]) + "/layer.tar"
	manifest, err := json.Marshal([]map[string]any{{"Config": configName, "RepoTags": []string{ref}, "Layers": []string{layerName}}})
	must(t, err)
	archive := filepath.Join(dir, "image.tar")
	f, err := os.Create(archive)
	must(t, err)
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, e := range []struct {
		name string
		data []byte
	}{{configName, config}, {layerName, layer.Bytes()}, {"manifest.json", manifest}} {
		if dir := filepath.Dir(e.name); dir != "." {
			must(t, tw.WriteHeader(&tar.Header{Name: dir + "/", Mode: 0o755, Typeflag: tar.TypeDir, ModTime: time.Unix(0, 0)}))
		}
		must(t, tw.WriteHeader(&tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.data)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}))
		_, err := tw.Write(e.data)
		must(t, err)
	}
	must(t, tw.Close())
	return archive
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// unmountUnder lazily unmounts every mount below dir, deepest first (a
// runtime killed by the test leaves its snapshots and shm mounted).
func unmountUnder(dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			mounts = append(mounts, fields[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	for _, m := range mounts {
		_ = unix.Unmount(m, unix.MNT_DETACH)
	}
}

// cniBinDir is a CNI bin dir with fabric-cni and Debian's loopback (which
// containerd runs for every pod's lo).
func cniBinDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	must(t, os.Symlink(filepath.Join(cniPluginDir(t), "fabric-cni"), filepath.Join(dir, "fabric-cni")))
	// nerdctl checks that its default network's plugins exist, used or not.
	for _, p := range []string{"loopback", "portmap", "bridge", "host-local", "firewall", "tuning"} {
		if _, err := os.Stat(filepath.Join(debianCNI, p)); err == nil {
			must(t, os.Symlink(filepath.Join(debianCNI, p), filepath.Join(dir, p)))
		}
	}
	return dir
}

// writeConflist writes fabric-cni's network configuration for a runtime.
func (c *cniHost) writeConflist(t *testing.T, dir, version string) {
	t.Helper()
	b, err := json.MarshalIndent(map[string]any{
		"cniVersion": version, "name": c.network,
		"plugins": []map[string]any{{
			"type": "fabric-cni", "network": c.network, "socket": c.socket,
			"capabilities": map[string]bool{"portMappings": true, "ips": true, "mac": true},
		}},
	}, "", "  ")
	must(t, err)
	must(t, os.MkdirAll(dir, 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "10-fabric.conflist"), b, 0o644))
}
