package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// A client that must remove a sandbox while the agent is down (a CNI DEL
// cannot wait, and must not be lost) queues the removal as a file in the
// directory next to the agent's socket; the agent carries out what it
// finds there when it starts and every few seconds while it runs. Only
// files owned by the agent's own user are taken.

// QueuedRemoval is one queued removal: the sandbox, and whose it must
// still be for the removal to apply (a sandbox made anew since, by
// someone else, is left alone).
type QueuedRemoval struct {
	Sandbox     string    `json:"sandbox"`
	Owner       string    `json:"owner"`
	ContainerID string    `json:"container_id"`
	Queued      time.Time `json:"queued"`
}

// RemovalQueueDir is the queue of the agent serving socket.
func RemovalQueueDir(socket string) string {
	return filepath.Join(filepath.Dir(socket), "del-queue")
}

// QueueRemoval writes q into the queue of the agent serving socket,
// atomically (a half-written file is never read).
func QueueRemoval(socket string, q QueuedRemoval) error {
	if q.Sandbox == "" || filepath.Base(q.Sandbox) != q.Sandbox {
		return fmt.Errorf("queue removal: bad sandbox name %q", q.Sandbox)
	}
	dir := RemovalQueueDir(socket)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("queue removal: %w", err)
	}
	b, err := json.Marshal(q)
	if err != nil {
		return fmt.Errorf("queue removal: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("queue removal: %w", err)
	}
	_, werr := tmp.Write(b)
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("queue removal: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, q.Sandbox+".json")); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("queue removal: %w", err)
	}
	return nil
}
