package ebpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/plumb"
)

// Purge removes what the eBPF datapath leaves behind on purpose when its
// agent stops (so that traffic keeps flowing and a restart is lossless):
// every program link pinned under bpfRoot — endpoint and tunnel tc
// programs, the uplink's tc/XDP programs, the cgroup socket hooks and the
// sockops program on the root cgroup — is detached, the maps are unpinned
// (the socket hash goes with its sk_msg program, and its sockets go back
// to plain TCP), bpfRoot is removed,
// and so are the gateway and tunnel devices; then plumb.Purge removes the
// rest. It is for a stopped agent (`fabricd reset`).
func Purge(nsPath, bpfRoot string) error {
	if bpfRoot == "" {
		bpfRoot = DefaultBPFRoot
	}
	if nsPath == "" {
		nsPath = "/proc/self/ns/net"
	}
	var errs []error
	pins, _ := filepath.Glob(filepath.Join(bpfRoot, "links", "*"))
	for _, pin := range pins {
		if blk, ok := blockOfPin(filepath.Base(pin)); ok {
			errs = append(errs, purgeBlock(nsPath, blk))
		}
		errs = append(errs, detach(pin))
	}
	// Only the directories the datapath made (ensureBPFFS), then bpfRoot
	// itself if that left it empty: a bpf root shared by mistake with
	// something else keeps the something else.
	if err := isBPFFS(bpfRoot); err == nil {
		for _, sub := range []string{"maps", "links"} {
			if err := os.RemoveAll(filepath.Join(bpfRoot, sub)); err != nil {
				errs = append(errs, fmt.Errorf("remove pins in %s: %w", bpfRoot, err))
			}
		}
		if err := os.Remove(bpfRoot); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove bpf root %s: %w", bpfRoot, err))
		}
	}
	h, err := netns.HandleAt(nsPath)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	defer h.Close()
	for _, name := range []string{gwDevice, tunDevice} {
		l, err := h.LinkByName(name)
		if err != nil {
			continue // not there
		}
		if err := h.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", name, err))
		}
	}
	errs = append(errs, plumb.Purge(nsPath))
	return errors.Join(errs...)
}

// purgeBlock deletes the clsact qdiscs bound to the endpoints' tc block
// blk: the block, and the endpoint program's filter on it, go with the
// last of them.
func purgeBlock(nsPath string, blk uint32) error {
	s, err := openTCSock(nsPath)
	if err != nil {
		return err
	}
	defer s.Close()
	qds, err := s.clsacts()
	if err != nil {
		return err
	}
	var errs []error
	for _, q := range qds {
		if q.ingress != blk {
			continue
		}
		if err := s.delClsact(q.ifindex); err != nil && !isLinkGone(err) {
			errs = append(errs, fmt.Errorf("detach endpoint program from ifindex %d: %w", q.ifindex, err))
		}
	}
	return errors.Join(errs...)
}
