package ebpf

import (
	"fmt"

	"github.com/fabricnet/fabric/datapath"
)

// SetRemotes replaces the remote endpoints of overlay network n.
func (f *Forwarder) SetRemotes(n datapath.Network, remotes []datapath.Remote) error {
	return fmt.Errorf("%w: overlay networks are not implemented by the eBPF datapath yet", datapath.ErrInvalid)
}
