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
	n, err := flush[endpointCtKey, endpointCtEntry](o.objs.Ct)
	if err != nil {
		return fmt.Errorf("flush conntrack: %w", err)
	}
	// Deleted, not evicted: ConntrackEvictions must not count them.
	if err := o.addCtStat(uint32(endpointCtStatCT_STAT_DELETES), uint64(n)); err != nil {
		return fmt.Errorf("flush conntrack: %w", err)
	}
	if _, err := flush[endpointFragKey, endpointFragEntry](o.objs.CtFrag); err != nil {
		return fmt.Errorf("flush fragment table: %w", err)
	}
	return nil
}

// countEntries counts a hash map's entries, in batches where the kernel
// has them. The map changes meanwhile: the count is a snapshot's, roughly.
func countEntries[K, V any](m *ebpf.Map) (int, error) {
	n, err := inBatches[K, V](m, m.BatchLookup)
	switch {
	case errors.Is(err, ebpf.ErrNotSupported):
		return countIterating[K, V](m)
	case err != nil:
		return 0, err
	}
	return n, nil
}

// inBatches runs a batch call of m (BatchLookup, BatchLookupAndDelete)
// over the whole map, a chunk at a time, and says how many entries it
// moved. A kernel without batches for the map answers ErrNotSupported.
func inBatches[K, V any](m *ebpf.Map, batch func(*ebpf.MapBatchCursor, any, any, *ebpf.BatchOptions) (int, error)) (int, error) {
	keys, vals := make([]K, batchChunk), make([]V, batchChunk)
	var cursor ebpf.MapBatchCursor
	total := 0
	for range int(m.MaxEntries())/batchChunk + 2 {
		n, err := batch(&cursor, keys, vals, nil)
		total += n
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return total, nil
		case err != nil:
			return total, err
		}
	}
	return total, nil
}

func countIterating[K, V any](m *ebpf.Map) (int, error) {
	n := 0
	err := eachEntry(m, func(K, V) { n++ })
	return n, err
}

// flush empties a hash map and says how many entries it deleted. Entries
// the programs add meanwhile may stay.
func flush[K, V any](m *ebpf.Map) (int, error) {
	n, err := inBatches[K, V](m, m.BatchLookupAndDelete)
	if errors.Is(err, ebpf.ErrNotSupported) {
		return flushIterating[K, V](m)
	}
	return n, err
}

func flushIterating[K, V any](m *ebpf.Map) (int, error) {
	var keys []K
	if err := eachEntry(m, func(k K, _ V) { keys = append(keys, k) }); err != nil {
		return 0, err
	}
	n := 0
	for _, k := range keys {
		err := m.Delete(k)
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, err
		}
		if err == nil {
			n++
		}
	}
	return n, nil
}

// ConntrackEvictions is how many entries the connection table's LRU has
// evicted since it was made, as far as can be told: entries the programs
// inserted, minus those deleted (by the programs or FlushConntrack), minus
// those held now. The kernel does not report LRU evictions; reusing an
// expired entry's key is no insert, so the figure is a floor. entries is
// what ConntrackStats returned.
func (o *Objects) ConntrackEvictions(entries int) (uint64, error) {
	ins, err := o.ctStat(uint32(endpointCtStatCT_STAT_INSERTS))
	if err != nil {
		return 0, err
	}
	del, err := o.ctStat(uint32(endpointCtStatCT_STAT_DELETES))
	if err != nil {
		return 0, err
	}
	if ins < del+uint64(entries) {
		return 0, nil
	}
	return ins - del - uint64(entries), nil
}

func (o *Objects) ctStat(which uint32) (uint64, error) {
	var perCPU []uint64
	if err := o.objs.CtStats.Lookup(which, &perCPU); err != nil {
		return 0, fmt.Errorf("read conntrack stats: %w", err)
	}
	var sum uint64
	for _, v := range perCPU {
		sum += v
	}
	return sum, nil
}

func (o *Objects) addCtStat(which uint32, n uint64) error {
	var perCPU []uint64
	if err := o.objs.CtStats.Lookup(which, &perCPU); err != nil {
		return fmt.Errorf("read conntrack stats: %w", err)
	}
	if len(perCPU) == 0 {
		return nil
	}
	perCPU[0] += n
	if err := o.objs.CtStats.Put(which, perCPU); err != nil {
		return fmt.Errorf("write conntrack stats: %w", err)
	}
	return nil
}
