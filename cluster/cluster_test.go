package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

func mustPrefix(t testing.TB, s string) netip.Prefix {
	t.Helper()
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func TestMembershipAndMetadata(t *testing.T) {
	members := startCluster(t, 5)
	netnstest.Eventually(t, 5*time.Second, "member lists", func() bool {
		for _, c := range members {
			alive := 0
			for _, m := range c.Members() {
				if m.State == MemberAlive {
					alive++
				}
			}
			if alive != 5 {
				return false
			}
		}
		return true
	})
	for _, m := range members[3].Members() {
		if m.Meta.Name != m.Name || m.Meta.TunnelPort != 4789 || m.Meta.Datapath != "kernel" || m.Meta.Version != "test" {
			t.Errorf("member %s: metadata %+v", m.Name, m.Meta)
		}
		if m.Meta.Addr != netip.MustParseAddr("127.0.0.1") || m.Addr.Addr() != m.Meta.Addr {
			t.Errorf("member %s: address %s, metadata address %s", m.Name, m.Addr, m.Meta.Addr)
		}
	}

	// Metadata updates reach the others.
	if err := members[1].UpdateMeta(NodeMeta{Addr: netip.MustParseAddr("10.9.9.9"), TunnelPort: 4790, Datapath: "ebpf", Version: "v2"}); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 5*time.Second, "updated metadata", func() bool {
		for _, m := range members[4].Members() {
			if m.Name == "node-1" {
				return m.Meta.Datapath == "ebpf" && m.Meta.TunnelPort == 4790 && m.Meta.Addr == netip.MustParseAddr("10.9.9.9")
			}
		}
		return false
	})

	// A graceful leave is seen as such.
	events := watchEvents(t, members[0])
	if err := members[4].Close(); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 5*time.Second, "leave event", func() bool {
		_, ok := events.find(func(e Event) bool { return e.Type == EventMemberLeft && e.Member.Name == "node-4" })
		return ok
	})
}

func TestMetaCodec(t *testing.T) {
	m := NodeMeta{Name: "host-a", Addr: netip.MustParseAddr("192.0.2.7"), TunnelPort: 4789, Datapath: "ebpf", Version: "1.2.3", Identity: [32]byte{1, 2, 3}}
	b, err := encodeMeta(m)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 40+32 {
		t.Errorf("metadata is %d bytes; expected a compact encoding", len(b))
	}
	got, err := decodeMeta(b)
	if err != nil || got != m {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	for _, bad := range [][]byte{nil, {2}, append(b, 0), b[:len(b)-1], bytes.Repeat([]byte{1}, 600)} {
		if _, err := decodeMeta(bad); err == nil {
			t.Errorf("decodeMeta(%x) accepted", bad)
		}
	}
	if _, err := encodeMeta(NodeMeta{Name: "x", Version: strings.Repeat("v", 100)}); !errors.Is(err, ErrInvalid) {
		t.Errorf("long version: %v", err)
	}
}

func TestWrongKeyRefused(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	members := startCluster(t, 2, func(c *Config) { c.SecretKeys = [][]byte{k1} })
	seed := members[0].Addr().String()
	ctx := context.Background()

	cases := []struct {
		name string
		keys [][]byte
	}{
		{"wrong-key", [][]byte{k2}},
		{"no-key", nil},
	}
	for _, tc := range cases {
		cfg := testConfig(tc.name)
		cfg.SecretKeys = tc.keys
		c := startMember(t, cfg)
		_, err := c.Join(ctx, seed)
		if !errors.Is(err, ErrKeyMismatch) || !strings.Contains(err.Error(), "gossip key mismatch") {
			t.Errorf("%s: Join error = %v, want ErrKeyMismatch", tc.name, err)
		}
		if c.NumAlive() != 1 {
			t.Errorf("%s: sees %d members", tc.name, c.NumAlive())
		}
	}

	// An encrypted node cannot join an unencrypted cluster either.
	plain := startMember(t, testConfig("plain"))
	cfg := testConfig("keyed")
	cfg.SecretKeys = [][]byte{k1}
	keyed := startMember(t, cfg)
	if _, err := keyed.Join(ctx, plain.Addr().String()); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("keyed → plain: %v", err)
	}
	netnstest.Never(t, 500*time.Millisecond, "a node without the key got in", func() bool { return members[0].NumAlive() != 2 })
}

func TestKeyRotation(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	members := startCluster(t, 3, func(c *Config) { c.SecretKeys = [][]byte{k1} })
	ctx := timeoutCtx(t, 20*time.Second)

	if err := members[1].InstallKey(ctx, k2); err != nil {
		t.Fatal(err)
	}
	for _, c := range members {
		if keys := c.Keys(); len(keys) != 2 || !bytes.Equal(keys[0], k1) {
			t.Fatalf("%s after install: %d keys, primary k1=%v", c.Name(), len(keys), bytes.Equal(keys[0], k1))
		}
	}
	if err := members[2].UseKey(ctx, k2); err != nil {
		t.Fatal(err)
	}
	if err := members[0].RemoveKey(ctx, k2); !errors.Is(err, ErrInUse) {
		t.Errorf("removing the primary: %v, want ErrInUse", err)
	}
	if err := members[0].RemoveKey(ctx, k1); err != nil {
		t.Fatal(err)
	}
	for _, c := range members {
		if keys := c.Keys(); len(keys) != 1 || !bytes.Equal(keys[0], k2) {
			t.Fatalf("%s after rotation: %d keys", c.Name(), len(keys))
		}
	}
	// Still one cluster, and state still replicates.
	createNetwork(t, members, "after-rotation", "10.77.0.0/16")
	if !allSee(members, 3) {
		t.Fatal("cluster split during rotation")
	}

	// Old key out, new key in.
	cfg := testConfig("old-key")
	cfg.SecretKeys = [][]byte{k1}
	if _, err := startMember(t, cfg).Join(ctx, members[0].Addr().String()); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("old key joined: %v", err)
	}
	cfg = testConfig("new-key")
	cfg.SecretKeys = [][]byte{k2}
	if _, err := startMember(t, cfg).Join(ctx, members[0].Addr().String()); err != nil {
		t.Errorf("new key refused: %v", err)
	}
}

func TestJoinRetriesUntilSeedAppears(t *testing.T) {
	port := netnstest.FreePort(t)
	cfg := testConfig("early")
	cfg.Join = []string{"127.0.0.1:" + strconv.Itoa(port)}
	early := startMember(t, cfg)
	netnstest.Eventually(t, 10*time.Second, "a failed join attempt", func() bool { return early.JoinError() != nil })

	cfg = testConfig("seed")
	cfg.BindPort = port
	seed := startMember(t, cfg)
	netnstest.Eventually(t, 10*time.Second, "late join", func() bool { return early.NumAlive() == 2 && seed.NumAlive() == 2 })
}

func TestLoadKeyFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	k16 := "AAAAAAAAAAAAAAAAAAAAAA=="
	k32 := "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	keys, err := LoadKeyFile(write("ok", "# primary first\n"+k32+"\n\n  "+k16+"  \n"))
	if err != nil || len(keys) != 2 || len(keys[0]) != 32 || len(keys[1]) != 16 {
		t.Fatalf("LoadKeyFile = %d keys, %v", len(keys), err)
	}
	for name, content := range map[string]string{
		"empty":  "# nothing\n",
		"base64": "not base64!\n",
		"length": "AAAA\n",
		"dup":    k16 + "\n" + k16 + "\n",
	} {
		_, err := LoadKeyFile(write(name, content))
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	if _, err := LoadKeyFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file accepted")
	}
}
