// Package vmtest boots the kernels users run (Debian's 6.1 and 6.12) in
// small qemu VMs and runs the project's compiled test binaries in them as
// root. The guest sees the host's filesystem read-only (virtio-9p) with a
// tmpfs overlay for writes, so the binaries, their test data and the
// host's tools and kernel modules are all there without copying.
//
// It knows nothing about fabric itself: it boots, runs commands, streams
// their output and reports what passed, failed and skipped.
package vmtest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Kernel is one entry of the test matrix: a Debian kernel package and
// where its image lands under /boot.
type Kernel struct {
	Name    string // short name used in reports and -kernel flags ("6.1")
	Package string // Debian package that installs it
	Image   string // glob of the vmlinuz file under /boot
}

// Matrix is the one list of kernels the project is tested on (make
// test-kernels, CI, make deps-kernels all read it).
var Matrix = []Kernel{
	{Name: "6.1", Package: "linux-image-amd64", Image: "/boot/vmlinuz-6.1.*-amd64"},
	{Name: "6.12", Package: "linux-image-6.12-amd64", Image: "/boot/vmlinuz-6.12.*-amd64"},
}

// HostPackages are the Debian packages the runner itself needs, as
// apt-ensure specs (package:command-or-file).
var HostPackages = []string{"qemu-system-x86:qemu-system-x86_64", "busybox-static:/bin/busybox"}

// ErrNoKernel is returned when a matrix kernel is not installed.
var ErrNoKernel = errors.New("kernel not installed")

// Lookup returns the matrix kernel called name.
func Lookup(name string) (Kernel, error) {
	for _, k := range Matrix {
		if k.Name == name {
			return k, nil
		}
	}
	return Kernel{}, fmt.Errorf("no kernel %q in the matrix", name)
}

// Installed returns the newest installed image of k and its release
// (the /lib/modules directory name), or ErrNoKernel.
func (k Kernel) Installed() (image, release string, err error) {
	matches, err := filepath.Glob(k.Image)
	if err != nil {
		return "", "", fmt.Errorf("kernel %s: %w", k.Name, err)
	}
	sort.Strings(matches)
	for i := len(matches) - 1; i >= 0; i-- {
		rel := strings.TrimPrefix(filepath.Base(matches[i]), "vmlinuz-")
		if _, err := os.Stat(filepath.Join("/lib/modules", rel, "modules.dep")); err == nil {
			return matches[i], rel, nil
		}
	}
	return "", "", fmt.Errorf("kernel %s (%s, Debian package %s; make deps-kernels installs it): %w", k.Name, k.Image, k.Package, ErrNoKernel)
}
