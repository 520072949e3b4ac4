// Package agentstate is what other programs may know of the agent's state
// file: its name in the state directory, its buckets, and the part of a
// sandbox record that says which network namespace the agent made for it.
// The agent owns this package and uses the same names, so a reader such as
// the lab's `down` cannot drift from what the agent writes. It is for an
// agent that is not running (the file is locked while it runs; ask the
// API then).
package agentstate

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/store"
	"github.com/fabricnet/fabric/datapath/netns"
)

// FileName is the state file in the agent's state directory.
const FileName = "state.db"

// The state file's buckets of records.
const (
	BucketNetworks  = "networks"
	BucketSandboxes = "sandboxes"
	BucketEndpoints = "endpoints"
)

// Sandbox is the part of the agent's sandbox record that names its
// namespace. The agent writes the record before it creates the namespace,
// so the records name every namespace the agent may have made.
type Sandbox struct {
	Name  string `json:"name"`
	Mode  string `json:"mode"`
	NetNS string `json:"netns,omitempty"`
}

// OwnNamespace returns the name of a namespace path under netns.RunDir,
// where the agent makes its sandboxes' namespaces.
func OwnNamespace(path string) (string, bool) {
	if path == "" || filepath.Dir(path) != filepath.Clean(netns.RunDir) {
		return "", false
	}
	name := filepath.Base(path)
	return name, netns.ValidName(name) == nil
}

// MadeNamespace returns the name of the namespace the agent made for the
// sandbox, if it made one: namespaces wired in by path are someone else's.
func (s Sandbox) MadeNamespace() (string, bool) {
	if s.Mode != api.ModeNetNS && s.Mode != api.ModeNone {
		return "", false
	}
	return OwnNamespace(s.NetNS)
}

// MadeNamespaces returns the names of the namespaces the state file in
// stateDir says the agent made: none if there is no state file. The agent
// must not be running (it holds the file's lock); this waits up to 2 s.
func MadeNamespaces(stateDir string) ([]string, error) {
	path := filepath.Join(stateDir, FileName)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	st, err := store.Open(path, nil, 2*time.Second)
	if err != nil {
		return nil, fmt.Errorf("read agent state: %w", err)
	}
	defer st.Close()
	var recs []Sandbox
	err = st.View(func(tx *store.Tx) error {
		var err error
		recs, err = store.List[Sandbox](tx, BucketSandboxes)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read agent state: %w", err)
	}
	var names []string
	for _, r := range recs {
		if name, ok := r.MadeNamespace(); ok {
			names = append(names, name)
		}
	}
	return names, nil
}
