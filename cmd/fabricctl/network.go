package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/spf13/cobra"
)

func newNetworkCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "network",
		Aliases: []string{"net"},
		Short:   "Create, list, inspect and remove networks; connect sandboxes to them",
		Long: `Manage networks. A network is a set of endpoints that can talk to each
other; sandboxes on different networks cannot, unless one sandbox is on
both. Drivers: bridge (this host; the default network "bridge" always
exists), overlay (spans every host of the cluster), macvlan and ipvlan (on
a parent interface or its VLAN sub-interface, e.g. -o parent=eth1.10).`,
		Example: `  fabricctl network create --subnet 10.10.0.0/24 blue
  fabricctl network ls
  fabricctl network connect --alias db blue db1
  fabricctl network rm blue`,
		Args: noSubcommand,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(
		newNetworkCreateCmd(c),
		newNetworkLsCmd(c),
		newNetworkInspectCmd(c),
		newNetworkRmCmd(c),
		newNetworkPruneCmd(c),
		newNetworkConnectCmd(c),
		newNetworkDisconnectCmd(c),
	)
	return cmd
}

// networkCreateLong is `network create --help`'s text: drivers and
// their options.
const networkCreateLong = `Create a network and print its ID.

Without --subnet the agent picks the next free subnet from its pool; the
gateway defaults to the subnet's first address. --ip-range restricts the
addresses handed to sandboxes to a part of the subnet, leaving the rest for
static --ip assignments. --internal networks get no route to the outside
world (no masquerading, no published ports to the host).

Drivers:
  bridge    a Linux bridge on this host; egress masqueraded, -p publishes ports
  macvlan   sandboxes sit directly on the LAN behind -o parent, each with its
            own MAC; --subnet/--gateway are the LAN's
  ipvlan    like macvlan but sharing the parent's MAC (l2), or routed (l3, l3s)
  overlay   spans every host of the cluster (fabricd --cluster-bind/--cluster-join):
            created or removed on any node, VXLAN between hosts; each node
            leases blocks of the subnet for its sandboxes; MTU = underlay - 50.
            Without --subnet a free /16 from 10.20.0.0-10.249.0.0 is picked

Driver options (-o KEY=VALUE, repeatable):
  mtu=1450               MTU of the network's interfaces (all drivers)
  exclude=IP,IP          addresses never handed out, e.g. hosts already on the LAN
  bridge_name=br-x       name of the Linux bridge (bridge; kernel datapath only: the eBPF datapath has none)
  block_bits=26          size of the address blocks nodes lease (overlay; default
                         /24, or subnet+4 bits for subnets smaller than /20)
  vni=4097               VXLAN network identifier (overlay; default: picked)
  parent=eth1            parent interface (macvlan, ipvlan); eth1.10 means VLAN 10
                         on eth1: the 802.1q sub-interface is created if missing
                         and removed with the network only if fabric created it.
                         A parent without VLAN serves one network only.
  macvlan_mode=MODE      bridge (default), private, vepa or passthru
  ipvlan_mode=MODE       l2 (default), l3 or l3s
  host_shim=true         let this host reach its own macvlan/ipvlan sandboxes
                         (the kernel keeps a parent and its children apart):
                         fabric adds a host interface with an address from the
                         subnet and a route per sandbox; removed with the network

Note: on this command -o means --opt, as in 'docker network create'. To
choose the output format here, use the long form --output json.`

const networkCreateExample = `  fabricctl network create blue
  fabricctl network create --subnet 10.10.0.0/24 --gateway 10.10.0.1 blue
  fabricctl network create --subnet 10.20.0.0/16 --ip-range 10.20.1.0/24 --internal backend
  fabricctl network create -o mtu=1450 -o bridge_name=br-blue --output json blue
  fabricctl network create -d macvlan --subnet 192.168.10.0/24 --gateway 192.168.10.1 \
      -o parent=eth1.10 -o exclude=192.168.10.2,192.168.10.3 -o host_shim=true vlan10
  fabricctl network create -d ipvlan --subnet 10.50.0.0/24 -o parent=eth1 -o ipvlan_mode=l2 lan
  fabricctl network create -d overlay --subnet 10.30.0.0/16 mesh`

func newNetworkCreateCmd(c *cli) *cobra.Command {
	var (
		req  api.NetworkCreate
		opts []string
	)
	cmd := &cobra.Command{
		Use:     "create [OPTIONS] NAME",
		Short:   "Create a network",
		Long:    networkCreateLong,
		Example: networkCreateExample,
		Args:    exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			var err error
			if req.Options, err = parseOptions(opts); err != nil {
				return usageErr(cmd, err)
			}
			n, err := c.client().CreateNetwork(cmd.Context(), req)
			if err != nil {
				return explain(err, "create network %s", req.Name)
			}
			return c.render(cmd.OutOrStdout(), n, func(w io.Writer) error {
				_, err := fmt.Fprintln(w, n.ID)
				return err
			})
		},
	}
	f := cmd.Flags()
	f.StringVarP(&req.Driver, "driver", "d", api.DriverBridge, "driver: bridge, overlay, macvlan or ipvlan")
	f.StringVar(&req.Subnet, "subnet", "", "subnet in CIDR notation, e.g. 10.10.0.0/24 (default: next free one from the pool)")
	f.StringVar(&req.Gateway, "gateway", "", "gateway address in the subnet (default: its first address)")
	f.StringVar(&req.IPRange, "ip-range", "", "give sandboxes addresses only from this CIDR inside the subnet")
	f.BoolVar(&req.Internal, "internal", false, "no access to or from the outside world")
	f.StringArrayVarP(&opts, "opt", "o", nil, "driver option KEY=VALUE (repeatable)")
	// The global --output/-o would clash with -o/--opt. A local flag of the
	// same name shadows the global one (cobra merges inherited flags by
	// name), so here the format is --output only, on the same variable.
	f.StringVar(&c.output, "output", "table", "output format: table or json (no -o short form on this command)")
	return cmd
}

// parseOptions turns repeated KEY=VALUE driver options into a map.
func parseOptions(opts []string) (map[string]string, error) {
	if len(opts) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(opts))
	for _, o := range opts {
		k, v, ok := strings.Cut(o, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("bad driver option %q: want KEY=VALUE, e.g. -o mtu=1450", o)
		}
		m[k] = v
	}
	return m, nil
}

func newNetworkLsCmd(c *cli) *cobra.Command {
	return listCmd(c, &cobra.Command{
		Use:     "ls [OPTIONS]",
		Aliases: []string{"list"},
		Short:   "List networks",
		Long: `List networks with their subnet, gateway and number of endpoints.
ENDPOINTS counts the sandboxes attached to the network on this host.`,
		Example: `  fabricctl network ls
  fabricctl network ls -q
  fabricctl network ls -o json
  fabricctl network ls --filter driver=overlay --format '{{.Name}} {{.Subnet}}'`,
	}, networkListing)
}

// networkListing is what network ls and prune know of networks.
var networkListing = listing[api.Network]{
	kind:  "networks",
	fetch: (*api.Client).Networks,
	sort:  sortNetworks,
	name:  func(n api.Network) string { return n.Name },
	table: networkTable,
}

func newNetworkInspectCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect NAME...",
		Short: "Show networks in detail (JSON)",
		Long: `Print one or more networks, by name or ID, as a JSON array with
everything the agent knows: subnet, gateway, ip range, bridge, MTU,
options and address usage. Always JSON, whatever --output says.`,
		Example: `  fabricctl network inspect blue
  fabricctl network inspect blue red`,
		Args: minArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return inspectEach(cmd, args, "network", c.client().Network)
		},
	}
}

func newNetworkRmCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"remove"},
		Short:   "Remove networks",
		Long: `Remove one or more networks and print the name of each one removed.
A network still connected to sandboxes is refused: disconnect or remove
them first ('fabricctl endpoint ls' shows who is attached).`,
		Example: `  fabricctl network rm blue
  fabricctl network rm $(fabricctl network ls -q | grep ^test-)`,
		Args: minArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return removeEach(cmd, args, "network", c.client().RemoveNetwork)
		},
	}
}

func newNetworkConnectCmd(c *cli) *cobra.Command {
	var req api.Connect
	cmd := &cobra.Command{
		Use:   "connect [OPTIONS] NETWORK SANDBOX",
		Short: "Connect a sandbox or a network namespace to a network",
		Long: `Connect a sandbox to a network: the agent creates an endpoint (a veth pair,
or a macvlan/ipvlan child) with an address from the network, unless --ip asks for a given one.
--alias adds names under which the embedded DNS server answers for the
sandbox on this network (like run --alias; repeatable).

SANDBOX is a sandbox name, or the path of a network namespace fabric did
not create, which is then wired in as an external sandbox:
  /proc/PID/ns/net       the namespace of a running process (e.g. a container)
  /var/run/netns/NAME    a namespace made by 'ip netns add NAME'

With -o json the new endpoint is printed.`,
		Example: `  fabricctl network connect blue web
  fabricctl network connect --ip 10.10.0.50 --alias db --alias postgres blue db1
  fabricctl network connect blue /proc/4242/ns/net
  fabricctl network connect blue /var/run/netns/lab1`,
		Args: exactArgs("NETWORK", "SANDBOX"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Sandbox = args[1]
			ep, err := c.client().Connect(cmd.Context(), args[0], req)
			if err != nil {
				return explain(err, "connect %s to network %s", args[1], args[0])
			}
			if c.json() {
				return c.emit(cmd.OutOrStdout(), ep)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&req.IP, "ip", "", "IPv4 address for the sandbox on this network (default: next free one)")
	cmd.Flags().StringArrayVar(&req.Aliases, "alias", nil, "extra DNS name for the sandbox on this network (repeatable)")
	return cmd
}

func newNetworkDisconnectCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "disconnect NETWORK SANDBOX",
		Short: "Disconnect a sandbox from a network",
		Long: `Remove the sandbox's endpoint on the network: its interface and address
go away, the sandbox and its other endpoints stay. SANDBOX is a name or a
namespace path, as given to 'network connect'.`,
		Example: `  fabricctl network disconnect blue web
  fabricctl network disconnect blue /proc/4242/ns/net`,
		Args: exactArgs("NETWORK", "SANDBOX"),
		RunE: func(cmd *cobra.Command, args []string) error {
			err := c.client().Disconnect(cmd.Context(), args[0], api.Disconnect{Sandbox: args[1]})
			if err != nil {
				return explain(err, "disconnect %s from network %s", args[1], args[0])
			}
			return nil
		},
	}
}
