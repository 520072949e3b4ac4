package lab

import (
	"context"
	"fmt"
)

// StartNode starts a node's agent again after it died (a crash, a kill in a
// failure test) with the same arguments, state and pins, and waits until
// it answers. A node whose agent runs is left alone: started is false.
func StartNode(ctx context.Context, root, name, node string) (started bool, err error) {
	m, err := Load(root, name)
	if err != nil {
		return false, err
	}
	unlock, err := lockDir(m.Dir, lockWait)
	if err != nil {
		return false, err
	}
	defer unlock()
	if m, err = Load(root, name); err != nil { // again, under the lock
		return false, err
	}
	if m.State != StateUp {
		return false, fmt.Errorf("%w: lab %s is %s, not up; run 'fabricctl lab down --name %s' and 'lab up' again", ErrInvalid, name, m.State, name)
	}
	n, err := m.Node(node)
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if agentAlive(m.Fabricd, *n) || len(agentPIDs(m.Fabricd, *n)) > 0 {
		return false, nil
	}
	for i := range m.Nodes {
		if m.Nodes[i].ID == n.ID {
			ready, err := startNode(ctx, m, i, func(string) {})
			if err != nil {
				return false, err
			}
			return true, ready()
		}
	}
	return false, nil
}
