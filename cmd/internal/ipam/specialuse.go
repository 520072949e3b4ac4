package ipam

import (
	"fmt"
	"net/netip"

	"github.com/fabricnet/fabric/cluster/specialuse"
)

// CheckSpecialUse refuses a subnet that overlaps a special-use range (the
// list is specialuse.Ranges, which the cluster checks overlay subnets
// against too). It is separate from ValidateNetwork so that a network
// stored before the check existed still loads (and can be removed).
func CheckSpecialUse(subnet netip.Prefix) error {
	for _, s := range specialuse.Ranges {
		if Overlaps(s.Prefix, subnet) {
			return fmt.Errorf("%w: subnet %s overlaps the %s range, which hosts treat specially; pick a private range such as 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16",
				ErrInvalidNetwork, subnet, s)
		}
	}
	return nil
}
