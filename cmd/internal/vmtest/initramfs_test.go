package vmtest

import (
	"bytes"
	"strings"
	"testing"
)

// TestModuleOrder: dependencies load before what needs them, each module
// once, built-in modules (absent from modules.dep) are skipped.
func TestModuleOrder(t *testing.T) {
	dep := `kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/net/9p/9pnet.ko.xz:
kernel/fs/netfs/netfs.ko.xz:
kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/fs/overlayfs/overlay.ko.xz:
`
	got, err := moduleOrder(strings.NewReader(dep), []string{"virtio_pci", "9pnet_virtio", "9p", "overlay"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"kernel/drivers/virtio/virtio_ring.ko.xz", "kernel/net/9p/9pnet.ko.xz", "kernel/net/9p/9pnet_virtio.ko.xz",
		"kernel/fs/netfs/netfs.ko.xz", "kernel/fs/9p/9p.ko.xz", "kernel/fs/overlayfs/overlay.ko.xz",
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("order\n got %v\nwant %v", got, want)
	}
}

// TestCPIO: entries are newc headers, names NUL-terminated and padded to
// 4 bytes, data padded to 4, ending with the trailer.
func TestCPIO(t *testing.T) {
	var b bytes.Buffer
	c := &cpioWriter{w: &b}
	c.dir("bin")
	c.file("init", 0o755, []byte("#!x"))
	c.trailer()
	if c.err != nil {
		t.Fatal(c.err)
	}
	s := b.String()
	if b.Len()%4 != 0 || strings.Count(s, "070701") != 3 || !strings.Contains(s, "init\x00") || !strings.HasSuffix(strings.TrimRight(s, "\x00"), "TRAILER!!!") {
		t.Errorf("archive %q", s)
	}
	// The file's header: mode 0100755, size 3, name size 5 ("init" + NUL).
	i := strings.Index(s, "init\x00")
	hdr := s[i-110 : i]
	if hdr[14:22] != "000081ed" || hdr[54:62] != "00000003" || hdr[94:102] != "00000005" {
		t.Errorf("header %q", hdr)
	}
}
