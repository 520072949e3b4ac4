//go:build linux

package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// batchChunk is how many entries one batch syscall moves. A hash map's
// batch must hold the largest bucket; 4096 is far above any real one.
const batchChunk = 4096

// ConntrackStats reports how many entries the connection table (the `ct`
// map, two entries per translated connection) holds and how many it can.
// Expired entries count until they are reused or evicted: the table is an
// LRU, so a full one evicts the least recently used connection instead of
// refusing new ones, and entries near capacity are the signal to watch.
func (o *Objects) ConntrackStats() (entries, capacity int, err error) {
	entries, err = countEntries[endpointCtKey, endpointCtEntry](o.objs.Ct)
	if err != nil {
		return 0, 0, fmt.Errorf("count conntrack entries: %w", err)
	}
	return entries, int(o.objs.Ct.MaxEntries()), nil
}

// FlushConntrack forgets every translated connection and fragment
// mapping. Connections through NAT break (their next packet starts a new
// mapping, for masquerade possibly with another port): for tests, and for
// an operator who changed the masquerade address.
func (o *Objects) FlushConntrack() error {
	if err := flush[endpointCtKey, endpointCtEntry](o.objs.Ct); err != nil {
		return fmt.Errorf("flush conntrack: %w", err)
	}
	if err := flush[endpointFragKey, endpointFragEntry](o.objs.CtFrag); err != nil {
		return fmt.Errorf("flush fragment table: %w", err)
	}
	return nil
}

// countEntries counts a hash map's entries, in batches where the kernel
// has them. The map changes meanwhile: the count is a snapshot's, roughly.
func countEntries[K, V any](m *ebpf.Map) (int, error) {
	keys, vals := make([]K, batchChunk), make([]V, batchChunk)
	var cursor ebpf.MapBatchCursor
	total := 0
	for range int(m.MaxEntries())/batchChunk + 2 {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		total += n
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return total, nil
		case errors.Is(err, ebpf.ErrNotSupported):
			return countIterating[K, V](m)
		case err != nil:
			return 0, err
		}
	}
	return total, nil
}

func countIterating[K, V any](m *ebpf.Map) (int, error) {
	var (
		k K
		v V
		n int
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n, it.Err()
}

// flush empties a hash map. Entries the programs add meanwhile may stay.
func flush[K, V any](m *ebpf.Map) error {
	keys, vals := make([]K, batchChunk), make([]V, batchChunk)
	var cursor ebpf.MapBatchCursor
	for range int(m.MaxEntries())/batchChunk + 2 {
		_, err := m.BatchLookupAndDelete(&cursor, keys, vals, nil)
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return nil
		case errors.Is(err, ebpf.ErrNotSupported):
			return flushIterating[K, V](m)
		case err != nil:
			return err
		}
	}
	return nil
}

func flushIterating[K, V any](m *ebpf.Map) error {
	var (
		k    K
		v    V
		keys []K
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}
