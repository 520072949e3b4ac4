package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ManifestFile is the manifest's name inside the lab directory.
const ManifestFile = "lab.json"

// manifestVersion is bumped when the format changes incompatibly.
const manifestVersion = 1

// Lab states, as recorded in the manifest.
const (
	StateCreating = "creating" // Up is running, or died before finishing
	StateUp       = "up"       // Up finished: every agent answered
	StateRemoving = "removing" // Down is running, or died before finishing
)

// Manifest is everything a lab is made of. Up writes it in full before it
// creates the first object, and again whenever it learns something (an
// agent's PID), so Down can always remove what exists of it.
type Manifest struct {
	Version  int          `json:"version"`
	Name     string       `json:"name"`
	Dir      string       `json:"dir"`
	State    string       `json:"state"`
	Created  time.Time    `json:"created"`
	Datapath string       `json:"datapath"`
	Fabricd  string       `json:"fabricd"`
	Subnet   netip.Prefix `json:"subnet"`
	Gateway  netip.Addr   `json:"gateway"`
	Underlay Underlay     `json:"underlay"`
	Nodes    []Node       `json:"nodes"`
	// KeyFile is every agent's --cluster-secret-file: the one given, or
	// DIR/gossip.key, which Up generates (OwnKey) so that even a lab
	// gossips encrypted and authenticated.
	KeyFile string `json:"key_file"`
	OwnKey  bool   `json:"own_key,omitempty"`
}

// Underlay is the network the nodes share: a bridge in a namespace of its
// own, so that nothing in the host's namespace is touched.
type Underlay struct {
	NetNS  string `json:"netns"`  // namespace name (/var/run/netns/NETNS)
	Bridge string `json:"bridge"` // bridge device in NetNS; holds the gateway address
}

// Node is one host of the lab.
type Node struct {
	ID       string     `json:"id"`            // n1, n2, …: what `lab exec` takes
	Name     string     `json:"name"`          // LAB-n1: fabricd's --node-name and the namespace name
	NetNS    string     `json:"netns"`         // namespace name (/var/run/netns/NETNS)
	IP       netip.Addr `json:"ip"`            // underlay address on eth0
	Port     string     `json:"underlay_port"` // the veth's bridge side, in the underlay namespace
	Dir      string     `json:"dir"`
	StateDir string     `json:"state_dir"`
	Socket   string     `json:"socket"`
	Log      string     `json:"log"`
	BPFRoot  string     `json:"bpf_root"`
	// Metrics is where the agent serves /metrics: reachable from the
	// underlay namespace and the other nodes, not from the host. Zero for
	// labs made before agents listened there (they serve on their
	// namespace's loopback).
	Metrics netip.AddrPort `json:"metrics,omitzero"`
	// Argv is fabricd's command line, also to restart an agent by hand:
	// nsenter --net=/var/run/netns/NETNS ARGV...
	Argv    []string  `json:"argv"`
	PID     int       `json:"pid,omitempty"`
	Started time.Time `json:"started,omitzero"`
}

// NetNSPath is the node namespace's bind mount.
func (n Node) NetNSPath() string { return filepath.Join("/var/run/netns", n.NetNS) }

// Node finds a node by its ID (n2), its full name (LAB-n2) or its number (2).
func (m *Manifest) Node(id string) (*Node, error) {
	if _, err := strconv.Atoi(id); err == nil {
		id = "n" + id
	}
	for i := range m.Nodes {
		if n := &m.Nodes[i]; n.ID == id || n.Name == id {
			return n, nil
		}
	}
	ids := make([]string, len(m.Nodes))
	for i, n := range m.Nodes {
		ids[i] = n.ID
	}
	return nil, fmt.Errorf("lab %s has no node %q; its nodes are %s", m.Name, id, strings.Join(ids, ", "))
}

// plan fills in every name, address and path of the lab described by o.
func plan(o Options) *Manifest {
	dir := filepath.Join(o.root(), o.Name)
	m := &Manifest{
		Version: manifestVersion, Name: o.Name, Dir: dir, State: StateCreating,
		Created: time.Now().UTC().Truncate(time.Second), Datapath: o.Datapath, Fabricd: o.Fabricd,
		Subnet: o.Subnet, Gateway: hostAddr(o.Subnet, gatewayHost),
		Underlay: Underlay{NetNS: o.Name + "-ul", Bridge: "br0"},
	}
	m.KeyFile = o.SecretFile
	if m.KeyFile == "" {
		m.KeyFile, m.OwnKey = filepath.Join(dir, "gossip.key"), true
	}
	var seed string
	for i := 1; i <= o.Nodes; i++ {
		id := "n" + strconv.Itoa(i)
		n := Node{
			ID: id, Name: o.Name + "-" + id, NetNS: o.Name + "-" + id,
			IP: hostAddr(o.Subnet, firstNodeHost+i), Port: id,
			Dir: filepath.Join(dir, id),
		}
		n.StateDir = filepath.Join(n.Dir, "state")
		n.Socket = filepath.Join(n.Dir, "fabricd.sock")
		n.Log = filepath.Join(n.Dir, "fabricd.log")
		n.BPFRoot = filepath.Join(BPFDir, "fabric-lab-"+o.Name+"-"+id)
		n.Metrics = netip.AddrPortFrom(n.IP, metricsPort)
		bind := netip.AddrPortFrom(n.IP, clusterPort).String()
		n.Argv = []string{o.Fabricd,
			"--config", os.DevNull, // a host's /etc/fabric/fabric.yaml must not change the lab
			"--state-dir", n.StateDir, "--socket", n.Socket, "--node-name", n.Name,
			"--bpf-root", n.BPFRoot, "--datapath", o.Datapath, "--uplink", "eth0",
			"--metrics-listen", n.Metrics.String(), "--cluster-bind", bind,
			// Sandbox names are the node's own: n1's "api" lives at
			// /var/run/netns/LAB-n1-api, n2's at LAB-n2-api.
			"--netns-prefix", n.Name + "-",
			// The lab is cut off from the world: the host's resolvers are
			// out of reach, and asking them would make every outside name
			// wait out the timeouts. The gateway (in the underlay
			// namespace) refuses DNS at once, unless someone runs a
			// resolver there (nsenter --net=/var/run/netns/LAB-ul ...).
			"--dns-upstreams", netip.AddrPortFrom(m.Gateway, 53).String(),
			"--cluster-secret-file", m.KeyFile}
		if seed == "" {
			seed = bind // node 1 starts the cluster, the others join it
		} else {
			n.Argv = append(n.Argv, "--cluster-join", seed)
		}
		m.Nodes = append(m.Nodes, n)
	}
	return m
}

// Path returns the manifest path of the named lab under root.
func Path(root, name string) string {
	if root == "" {
		root = DefaultRoot
	}
	return filepath.Join(root, name, ManifestFile)
}

// Load reads the named lab's manifest; ErrNotFound if there is none.
func Load(root, name string) (*Manifest, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	p := Path(root, name)
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s (no %s)", ErrNotFound, name, p)
	}
	if err != nil {
		return nil, fmt.Errorf("read lab manifest: %w", err)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("decode lab manifest %s: %w", p, err)
	}
	if m.Version != manifestVersion {
		return nil, fmt.Errorf("lab manifest %s has version %d; this fabricctl reads version %d", p, m.Version, manifestVersion)
	}
	if err := m.check(name); err != nil {
		return nil, fmt.Errorf("lab manifest %s: %w", p, err)
	}
	return &m, nil
}

// check makes sure the manifest names only what Up would have made for a
// lab of this name, so that Down, which deletes what it names, cannot be
// turned against anything else by a damaged or hand-edited file.
func (m *Manifest) check(name string) error {
	if m.Name != name {
		return fmt.Errorf("it describes lab %q, not %q", m.Name, name)
	}
	if m.Underlay.NetNS != name+"-ul" {
		return fmt.Errorf("underlay namespace %q is not %s-ul", m.Underlay.NetNS, name)
	}
	for _, n := range m.Nodes {
		if n.NetNS != name+"-"+n.ID || !strings.HasPrefix(n.ID, "n") || ValidName(n.ID) != nil {
			return fmt.Errorf("node %q has namespace %q, not %s-%s", n.ID, n.NetNS, name, n.ID)
		}
	}
	return nil
}

// save writes the manifest atomically (temporary file, fsync, rename), so
// a crash leaves either the old or the new one.
func (m *Manifest) save() error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encode lab manifest: %w", err)
	}
	p := filepath.Join(m.Dir, ManifestFile)
	tmp, err := os.CreateTemp(m.Dir, ".lab-*.json")
	if err != nil {
		return fmt.Errorf("write lab manifest: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write lab manifest: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync lab manifest: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write lab manifest: %w", err)
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return fmt.Errorf("write lab manifest: %w", err)
	}
	return nil
}

// List returns the names of the labs under root, sorted.
func List(root string) ([]string, error) {
	if root == "" {
		root = DefaultRoot
	}
	entries, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list labs: %w", err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && ValidName(e.Name()) == nil {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// lockDir takes an exclusive flock on dir, so that one `lab up` or
// `lab down` works on a lab at a time; it waits up to wait for another
// to finish. The lock goes with the process, even if it crashes.
func lockDir(dir string, wait time.Duration) (unlock func(), err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("lock lab: %w", err)
	}
	deadline := time.Now().Add(wait)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("%w: another fabricctl lab up or down holds %s", ErrBusy, dir)
			}
			return nil, fmt.Errorf("lock lab %s: %w", dir, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
