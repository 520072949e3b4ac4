package kernel

import (
	"errors"
	"fmt"
	"strings"

	"github.com/google/nftables"

	"github.com/fabricnet/fabric/datapath"
	"github.com/fabricnet/fabric/datapath/netns"
)

// Purge removes what the kernel datapath leaves in the namespace at nsPath
// ("" = the caller's) when no agent runs: every link marked as fabric's
// (bridges, VXLAN devices, veths, VLAN sub-interfaces and shims it made)
// and its nftables table. It is `fabricd reset`'s last step, for a stopped
// agent; links without fabric's mark are never touched.
func Purge(nsPath string) error {
	if nsPath == "" {
		nsPath = "/proc/self/ns/net"
	}
	h, err := netns.HandleAt(nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	var errs []error
	links, err := retryDump(h.LinkList)
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		if !strings.HasPrefix(l.Attrs().Alias, datapath.OwnerPrefix) {
			continue
		}
		if err := h.LinkDel(l); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete link %s: %w", l.Attrs().Name, err))
		}
	}
	errs = append(errs, netns.Do(nsPath, deleteTable))
	return errors.Join(errs...)
}

// deleteTable removes fabric's nftables table from the current namespace,
// if it is there.
func deleteTable() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	tables, err := c.ListTablesOfFamily(table.Family)
	if err != nil {
		return fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == tableName {
			c.DelTable(t)
			if err := c.Flush(); err != nil {
				return fmt.Errorf("delete nftables table %s: %w", tableName, err)
			}
		}
	}
	return nil
}
