package dockerplugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Docker never replays CreateNetwork or CreateEndpoint after a plugin
// restart: what it told the plugin is kept in a file of the plugin's own
// under the agent's state dir, written whole (temp file, fsync, rename) on
// every change, so a kill at any moment leaves the old or the new state.

// netRec is a Docker network and the fabric network behind it.
type netRec struct {
	ID       string            `json:"id"`             // Docker's network ID
	Name     string            `json:"name,omitempty"` // fabric network; empty until Docker's name is known
	Driver   string            `json:"driver"`
	Subnet   string            `json:"subnet"`
	Gateway  string            `json:"gateway,omitempty"`
	IPRange  string            `json:"ip_range,omitempty"`
	Internal bool              `json:"internal,omitempty"`
	Options  map[string]string `json:"options,omitempty"`
	// Created says the fabric network was made for this Docker network
	// (and goes with it); an adopted one stays.
	Created bool `json:"created,omitempty"`
	// Err is why the Docker network cannot be backed by fabric.
	Err string `json:"err,omitempty"`
	// Removed: Docker removed the network but fabric's could not go yet
	// (still in use, e.g. an overlay by another host); retried.
	Removed bool `json:"removed,omitempty"`
}

// epRec is a Docker endpoint.
type epRec struct {
	ID        string   `json:"id"`
	NetworkID string   `json:"network_id"`
	Addr      string   `json:"addr"` // without prefix length
	Ports     []string `json:"ports,omitempty"`
	Key       string   `json:"key,omitempty"`     // Docker's sandbox key, from Join
	Sandbox   string   `json:"sandbox,omitempty"` // fabric sandbox once connected
	// Link is the host side of the veth pair handed to Docker in Join
	// (empty: the namespace is attached by path and fabric makes its own
	// interface, as for macvlan and ipvlan networks).
	Link string `json:"link,omitempty"`
}

// poolRec is an address pool handed to Docker's IPAM.
type poolRec struct {
	ID      string `json:"id"`
	Subnet  string `json:"subnet"`
	IPRange string `json:"ip_range,omitempty"`
	Gateway string `json:"gateway,omitempty"`
}

type state struct {
	Networks  map[string]*netRec  `json:"networks"`
	Endpoints map[string]*epRec   `json:"endpoints"`
	Pools     map[string]*poolRec `json:"pools"`
}

func newState() *state {
	return &state{Networks: map[string]*netRec{}, Endpoints: map[string]*epRec{}, Pools: map[string]*poolRec{}}
}

func loadState(path string) (*state, error) {
	st := newState()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read docker plugin state: %w", err)
	}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("docker plugin state %s is corrupt: %w", path, err)
	}
	if st.Networks == nil {
		st.Networks = map[string]*netRec{}
	}
	if st.Endpoints == nil {
		st.Endpoints = map[string]*epRec{}
	}
	if st.Pools == nil {
		st.Pools = map[string]*poolRec{}
	}
	return st, nil
}

func (st *state) save(path string) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode docker plugin state: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write docker plugin state: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write docker plugin state: %w", err)
	}
	return nil
}

// netByPool finds the network whose address pool is the IPAM pool id.
func (st *state) netByPool(pool *poolRec) *netRec {
	for _, n := range st.Networks {
		if n.Subnet == pool.Subnet && !n.Removed {
			return n
		}
	}
	return nil
}
