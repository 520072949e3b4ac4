package agent

import (
	"context"
	"maps"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/datapath"
)

// makesBridges reports whether the datapath builds a Linux bridge per
// bridge network. The eBPF datapath does not (tc programs forward between
// the veths): there, networks report no bridge and bridge_name is refused.
// The records keep their bridge names all the same, so that a host moved
// to the kernel datapath gets the bridges they name (fabric0 for the
// default network).
func makesBridges(dp datapath.Datapath) bool {
	return dp.Status(context.Background()).Name != "ebpf"
}

// refuseBridgeName rejects -o bridge_name on a datapath without bridges,
// rather than accepting a name that nothing will ever carry.
func (a *Agent) refuseBridgeName(req api.NetworkCreate) error {
	if a.makesBridges {
		return nil
	}
	for k := range req.Options {
		if optionSynonyms[k] == "bridge_name" || k == "bridge_name" {
			return invalidf("option %s: the eBPF datapath makes no bridge (tc programs connect the endpoints' veths), so there is nothing to name; drop the option, or run fabricd --datapath kernel for a Linux bridge per network", k)
		}
	}
	return nil
}

// withoutBridge removes what a bridgeless datapath does not have from a
// network's API view.
func (a *Agent) withoutBridge(out api.Network) api.Network {
	if a.makesBridges || out.Bridge == "" {
		return out
	}
	out.Bridge = ""
	if _, ok := out.Options["bridge_name"]; ok {
		out.Options = maps.Clone(out.Options)
		delete(out.Options, "bridge_name")
		if len(out.Options) == 0 {
			out.Options = nil
		}
	}
	return out
}
