package vmtest

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// bootModules are what the guest needs before it can mount the host's
// root: PCI virtio, 9p over virtio, and overlayfs. Their dependencies come
// from modules.dep; modules built into the kernel are not in it and are
// skipped.
var bootModules = []string{"virtio_pci", "9pnet_virtio", "9p", "overlay"}

// moduleOrder returns the module files (relative to the modules dir) to
// load, dependencies first, each once. dep is the content of modules.dep.
func moduleOrder(dep io.Reader, want []string) ([]string, error) {
	deps := map[string][]string{} // module file -> its dependencies
	byName := map[string]string{} // module name -> file
	sc := bufio.NewScanner(dep)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		file, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[file] = strings.Fields(rest)
		byName[moduleName(file)] = file
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	var order []string
	seen := map[string]bool{}
	var visit func(file string, depth int) error
	visit = func(file string, depth int) error {
		if seen[file] {
			return nil
		}
		if depth > 32 {
			return fmt.Errorf("modules.dep: dependency loop at %s", file)
		}
		seen[file] = true
		// modules.dep lists dependencies so that the last loads first.
		d := deps[file]
		for i := len(d) - 1; i >= 0; i-- {
			if err := visit(d[i], depth+1); err != nil {
				return err
			}
		}
		order = append(order, file)
		return nil
	}
	for _, name := range want {
		file, ok := byName[name]
		if !ok {
			continue // built in
		}
		if err := visit(file, 0); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// moduleName is the module name of a .ko path ("kernel/fs/9p/9p.ko.xz" ->
// "9p"); the kernel treats '-' and '_' alike.
func moduleName(file string) string {
	base := filepath.Base(file)
	base, _, _ = strings.Cut(base, ".ko")
	return strings.ReplaceAll(base, "-", "_")
}

// initScript is the initramfs's /init: load the modules, mount the
// host's / read-only over 9p with a tmpfs overlay, mount the run's
// shared directory and hand over to its stage2 script.
const initScript = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /lower /rw /newroot /tmp
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
fail() { echo "vmtest init: $*"; poweroff -f; }
for m in /modules/*; do
	case $m in
	*.xz) unxz -c "$m" > /tmp/m.ko || fail "unxz $m"; insmod /tmp/m.ko || fail "insmod $m"; rm -f /tmp/m.ko ;;
	*) insmod "$m" || fail "insmod $m" ;;
	esac
done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 hostroot /lower || fail "mount host root"
mount -t tmpfs -o mode=0755 scratch /rw || fail "mount scratch"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || fail "mount overlay"
mkdir -p /newroot/vmtest
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 vmtest /newroot/vmtest || fail "mount vmtest dir"
umount /dev /sys /proc
exec switch_root /newroot /bin/sh /vmtest/stage2.sh
`

// buildInitramfs writes a newc cpio archive with busybox, /init and the
// boot modules of release (from /lib/modules/release).
func buildInitramfs(w io.Writer, busybox, release string) error {
	modDir := filepath.Join("/lib/modules", release)
	dep, err := os.Open(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	order, err := moduleOrder(dep, bootModules)
	dep.Close()
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	c := &cpioWriter{w: w}
	c.dir("bin")
	c.dir("dev")
	c.node("dev/console", 0o020600, 5, 1)
	c.dir("modules")
	c.file("bin/busybox", 0o755, bb)
	c.file("init", 0o755, []byte(initScript))
	for i, m := range order {
		data, err := os.ReadFile(filepath.Join(modDir, m))
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		c.file(fmt.Sprintf("modules/%02d-%s", i, filepath.Base(m)), 0o644, data)
	}
	c.trailer()
	return c.err
}

// cpioWriter writes the "newc" cpio format the kernel unpacks.
type cpioWriter struct {
	w   io.Writer
	n   int64
	ino int
	err error
}

func (c *cpioWriter) dir(name string) { c.entry(name, 0o040755, 2, 0, 0, nil) }
func (c *cpioWriter) file(name string, perm uint32, b []byte) {
	c.entry(name, 0o100000|perm, 1, 0, 0, b)
}
func (c *cpioWriter) node(name string, mode uint32, major, minor int) {
	c.entry(name, mode, 1, major, minor, nil)
}
func (c *cpioWriter) trailer() { c.entry("TRAILER!!!", 0, 1, 0, 0, nil) }

func (c *cpioWriter) entry(name string, mode uint32, nlink, rmajor, rminor int, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	var h bytes.Buffer
	fmt.Fprintf(&h, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmajor, rminor, len(name)+1, 0)
	h.WriteString(name)
	h.WriteByte(0)
	c.write(h.Bytes())
	c.pad()
	c.write(data)
	c.pad()
}

func (c *cpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.n += int64(n)
	c.err = err
}

func (c *cpioWriter) pad() {
	if r := c.n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}
