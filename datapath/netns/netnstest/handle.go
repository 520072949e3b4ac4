package netnstest

import (
	"testing"

	"github.com/vishvananda/netlink"

	fabricns "github.com/fabricnet/fabric/datapath/netns"
)

// Handle opens a netlink handle in the namespace at path, failing the test
// if it cannot; the caller closes it (defer h.Close()), or hands it to
// tb.Cleanup when it serves the whole test.
func Handle(tb testing.TB, path string) *netlink.Handle {
	tb.Helper()
	h, err := fabricns.HandleAt(path)
	if err != nil {
		tb.Fatalf("netlink handle in %s: %v", path, err)
	}
	return h
}
