package cluster

import (
	"runtime"
	"testing"
)

// memberMemoryLimit bounds the heap and stacks of a member that has
// started and knows nobody yet: what every member of a large cluster
// pays before it holds any state. Fixed-size buffers sized for bursts
// (an event channel of 1,024 events was 460 KiB, a reply queue of 1,024
// nodes 115 KiB) are what this keeps out: with them a member took about
// 700 KiB, without them about 200 KiB (most of it goroutine stacks).
const memberMemoryLimit = 320 << 10

func TestIdleMemberMemory(t *testing.T) {
	const n = 20
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var cs []*Cluster
	for i := range n {
		c, err := New(Config{NodeName: "mem" + string(rune('a'+i)), BindAddr: "127.0.0.1", BindPort: AnyPort, SecretKeys: [][]byte{make([]byte, 32)}})
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
		t.Cleanup(func() { _ = c.Stop() })
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := (int64(after.HeapInuse+after.StackInuse) - int64(before.HeapInuse+before.StackInuse)) / n
	t.Logf("%d KiB of heap and stacks per idle member (heap %d KiB, stacks %d KiB, %d goroutines)", per>>10,
		(int64(after.HeapInuse)-int64(before.HeapInuse))/n>>10, (int64(after.StackInuse)-int64(before.StackInuse))/n>>10, runtime.NumGoroutine())
	if per > memberMemoryLimit {
		t.Fatalf("an idle member takes %d KiB, want ≤ %d KiB", per>>10, memberMemoryLimit>>10)
	}
	runtime.KeepAlive(cs)
}
