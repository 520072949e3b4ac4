package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// render prints v as indented JSON with -o json, else calls table.
func (c *cli) render(w io.Writer, v any, table func(io.Writer) error) error {
	if c.json() {
		return c.emit(w, v)
	}
	return table(w)
}

func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "    ")
	if err != nil {
		return fmt.Errorf("encode json: %w", err)
	}
	b = append(b, '\n')
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

// table writes tab-separated rows aligned in columns.
type table struct {
	tw *tabwriter.Writer
}

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)}
	t.row(header...)
	return t
}

func (t *table) row(cols ...string) {
	for i, c := range cols {
		cols[i] = dash(c)
	}
	fmt.Fprintln(t.tw, strings.Join(cols, "\t"))
}

func (t *table) flush() error {
	if err := t.tw.Flush(); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

// dash stands in for an empty cell so columns stay readable and awk-able.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// shortID shortens an ID to 12 characters, as docker ls commands do.
func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// sortNetworks, sortSandboxes and sortEndpoints give lists a stable order
// whatever order the agent keeps them in.
func sortNetworks(nets []api.Network) {
	sort.SliceStable(nets, func(i, j int) bool { return nets[i].Name < nets[j].Name })
}

func sortSandboxes(sbs []api.Sandbox) {
	sort.SliceStable(sbs, func(i, j int) bool { return sbs[i].Name < sbs[j].Name })
}

func sortEndpoints(eps []api.Endpoint) {
	sort.SliceStable(eps, func(i, j int) bool {
		if eps[i].Sandbox != eps[j].Sandbox {
			return eps[i].Sandbox < eps[j].Sandbox
		}
		return eps[i].Network < eps[j].Network
	})
}

func networkTable(w io.Writer, nets []api.Network) error {
	t := newTable(w, "NAME", "ID", "DRIVER", "SCOPE", "SUBNET", "GATEWAY", "INTERNAL", "ENDPOINTS", "PARENT", "HEALTH")
	for _, n := range nets {
		parent, health := n.Parent, n.Health
		if parent == "" {
			parent = "-"
		}
		if health == "" {
			health = api.HealthOK
		}
		if i := strings.IndexByte(health, ':'); i > 0 {
			health = health[:i] // the reason is in inspect and status
		}
		scope := n.Scope
		if scope == "" {
			scope = "local"
		}
		t.row(n.Name, shortID(n.ID), n.Driver, scope, n.Subnet, n.Gateway,
			strconv.FormatBool(n.Internal), strconv.Itoa(n.Endpoints), parent, health)
	}
	return t.flush()
}

func sandboxTable(w io.Writer, sbs []api.Sandbox) error {
	t := newTable(w, "NAME", "MODE", "STATE", "PID", "NETWORKS", "PORTS", "OWNER")
	for _, s := range sbs {
		t.row(s.Name, sandboxMode(s), sandboxState(s), pidString(s.PID),
			sandboxNetworks(s), portsString(s.Ports), sandboxOwner(s))
	}
	return t.flush()
}

func endpointTable(w io.Writer, eps []api.Endpoint) error {
	t := newTable(w, "SANDBOX", "NETWORK", "IFNAME", "IP", "MAC", "HOST-IF")
	for _, e := range eps {
		t.row(e.Sandbox, e.Network, e.IfName, e.IP, e.MAC, e.HostIfName)
	}
	return t.flush()
}

// sandboxOwner says who manages a sandbox other than fabric itself, with
// the owner's container ID as `docker ps` and `crictl pods` shorten it:
// "cni:3f2a9c0d1e4b".
func sandboxOwner(s api.Sandbox) string {
	if s.Owner == "" {
		return ""
	}
	id := s.ContainerID
	if len(id) > 12 {
		id = id[:12]
	}
	if id == "" {
		return s.Owner
	}
	return s.Owner + ":" + id
}

func sandboxMode(s api.Sandbox) string {
	if s.Mode == api.ModeContainer && s.Container != "" {
		return api.ModeContainer + ":" + s.Container
	}
	return s.Mode
}

func sandboxState(s api.Sandbox) string {
	if s.State == api.StateExited && s.ExitCode != nil {
		return fmt.Sprintf("%s (%d)", s.State, *s.ExitCode)
	}
	return s.State
}

func pidString(pid int) string {
	if pid == 0 {
		return ""
	}
	return strconv.Itoa(pid)
}

// sandboxNetworks lists a sandbox's addresses as NETWORK=IP, one per endpoint.
func sandboxNetworks(s api.Sandbox) string {
	parts := make([]string, 0, len(s.Endpoints))
	for _, e := range s.Endpoints {
		parts = append(parts, e.Network+"="+dash(e.IP))
	}
	return strings.Join(parts, ",")
}

// portsString formats published ports the way `docker ps` does:
// 0.0.0.0:8080->80/tcp.
func portsString(ports []api.Port) string {
	parts := make([]string, 0, len(ports))
	for _, p := range ports {
		host := p.HostIP
		if host == "" {
			host = "0.0.0.0"
		}
		parts = append(parts, fmt.Sprintf("%s:%d->%d/%s", host, p.HostPort, p.Port, p.Proto))
	}
	return strings.Join(parts, ",")
}

// statusText prints the agent's status as aligned "Key: value" lines.
func statusText(w io.Writer, socket string, s api.Status, verbose bool) error {
	tw := tabwriter.NewWriter(w, 0, 8, 1, ' ', 0)
	line := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, dash(v)) }
	line("Agent", "running at "+socket)
	line("Version", s.Version)
	line("Node", s.Node)
	uptime := s.Uptime
	if s.Started != "" {
		uptime += " (since " + s.Started + ")"
	}
	line("Uptime", uptime)
	line("Datapath", s.Datapath)
	for _, d := range s.Details {
		fmt.Fprintf(tw, "\t  %s\n", d)
	}
	line("Networks", strconv.Itoa(s.Networks))
	line("Sandboxes", strconv.Itoa(s.Sandboxes))
	line("Endpoints", strconv.Itoa(s.Endpoints))
	if d := s.DNS; d != nil {
		health := "ok"
		if len(d.Errors) > 0 {
			health = fmt.Sprintf("%d sandbox(es) without resolver", len(d.Errors))
		}
		line("DNS", fmt.Sprintf("%s: %d %s at 127.0.0.11, %d %s", health,
			d.Resolvers, plural(d.Resolvers, "resolver", "resolvers"), d.Records, plural(d.Records, "record", "records")))
		fmt.Fprintf(tw, "	  upstreams %s; answered %d local, %d forwarded, %d NXDOMAIN, %d failed\n",
			dash(strings.Join(d.Upstreams, ", ")), d.Local, d.Forwarded, d.NXDomain, d.Failed)
	}
	if cl := s.Cluster; cl != nil {
		enc := "unencrypted"
		if cl.Encrypted {
			enc = "encrypted"
		}
		dead := 0
		for _, m := range cl.Members {
			if m.State != "alive" {
				dead++
			}
		}
		line("Cluster", fmt.Sprintf("%d of %d members alive (%d suspect, %d failed or left), %d %s; gossip %s %s, tunnel %s",
			cl.Alive, len(cl.Members), cl.Suspect, dead, cl.Networks, plural(cl.Networks, "overlay network", "overlay networks"), cl.Gossip, enc, cl.Tunnel))
		fmt.Fprintf(tw, "\t  last full sync %s; gossip messages: %d sent, %d received, %d dropped, %d send errors\n",
			dash(cl.LastFullSync), cl.MessagesSent, cl.MessagesReceived, cl.MessagesDropped, cl.SendErrors)
		for _, m := range cl.Members {
			if !verbose && m.State == "alive" && (m.Reachable || m.Name == cl.Node) {
				continue // --verbose lists every member; otherwise only the troubled ones
			}
			self, probe := "", ""
			if m.Name == cl.Node {
				self = " (this node)"
			} else if m.Probe != "" {
				probe = ", probe " + m.Probe
			}
			fmt.Fprintf(tw, "\t  %-7s %s%s at %s, %s %s, %d endpoint(s)%s, since %s\n",
				m.State, m.Name, self, m.Addr, dash(m.Datapath), dash(m.Version), m.Endpoints, probe, m.Since)
		}
	}
	if len(s.Warnings) == 0 {
		line("Warnings", "none")
	} else {
		line("Warnings", strconv.Itoa(len(s.Warnings)))
		for _, warn := range s.Warnings {
			fmt.Fprintf(tw, "\t  ! %s\n", warn)
		}
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}
