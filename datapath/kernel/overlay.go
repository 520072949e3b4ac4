package kernel

import (
	"context"

	"github.com/fabricnet/fabric/datapath"
)

// SetRemotes replaces the remote endpoints of overlay network n.
func (d *Datapath) SetRemotes(ctx context.Context, n datapath.Network, remotes []datapath.Remote) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.nl == nil {
		return errClosed
	}
	if d.fwd != nil {
		return d.fwd.SetRemotes(n, remotes)
	}
	return invalidf("overlay networks are not implemented by the kernel datapath yet")
}
