package cluster

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

const (
	// DefaultPort is the gossip port, TCP and UDP (as for serf/consul).
	DefaultPort = 7946
	// AnyPort as BindPort lets the kernel pick a free port (tests).
	AnyPort = -1
)

// maxBroadcastBytes is the largest record that fits one gossip packet next
// to memberlist's own headers (UDPBufferSize 1400).
const maxBroadcastBytes = 1200

// Config configures a Cluster. Only NodeName is required.
type Config struct {
	NodeName string
	// BindAddr and BindPort are where gossip listens (TCP and UDP).
	// BindAddr defaults to 0.0.0.0, BindPort 0 to DefaultPort.
	BindAddr string
	BindPort int
	// AdvertiseAddr and AdvertisePort are how the others reach this node;
	// by default the bind address (or, for 0.0.0.0, a private address of
	// the host) and the bind port.
	AdvertiseAddr string
	AdvertisePort int
	// Join lists seeds (host:port). Until one answers they are retried
	// with exponential backoff between JoinBackoffMin (500ms) and
	// JoinBackoffMax (30s), so a node may start before its seeds; and
	// again whenever this node finds itself alone.
	Join           []string
	JoinBackoffMin time.Duration
	JoinBackoffMax time.Duration
	// ReconnectInterval is how often a failed member is asked to rejoin,
	// which heals partitions that memberlist alone would not (10s).
	ReconnectInterval time.Duration
	// SecretKeys turn on encrypted and authenticated gossip; the first key
	// is the primary. See LoadKeyFile.
	SecretKeys [][]byte
	// NodeKey is this node's ed25519 identity key (identity.go); its
	// direct messages are signed with it. Keep it across restarts (the
	// agent stores it in its state directory): while the others still see
	// the old incarnation alive they refuse a new key. Nil: a fresh key.
	NodeKey ed25519.PrivateKey
	// Meta is what this node tells the others. Name defaults to NodeName
	// and Addr to the advertised address.
	Meta   NodeMeta
	Logger *slog.Logger
	// RequestTimeout bounds a vote on a lease or a network (2s).
	RequestTimeout time.Duration
	// ReapEndpointsAfter: the endpoint records of a node gone (failed or
	// left) for this long are removed (5m).
	ReapEndpointsAfter time.Duration
	// ReclaimLeasesAfter: the blocks and static addresses of a node gone for
	// this long are released (30m). A node back before then keeps them.
	ReclaimLeasesAfter time.Duration
	// TombstoneTTL: how long removals are remembered (24h). A node offline
	// for longer can bring removed records back.
	TombstoneTTL time.Duration
	// EventBuffer is how many events may wait for the reader of Events
	// (1024); memory is taken only for the events actually waiting.
	EventBuffer int

	// tuneMemberlist lets tests and experiments change memberlist's config.
	tuneMemberlist func(*memberlist.Config)
	// wrapTransport lets tests cut links between members.
	wrapTransport func(memberlist.NodeAwareTransport) memberlist.NodeAwareTransport
}

func (cfg *Config) setDefaults() error {
	if err := validNodeName(cfg.NodeName); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if cfg.BindAddr == "" {
		cfg.BindAddr = "0.0.0.0"
	}
	if _, err := netip.ParseAddr(cfg.BindAddr); err != nil {
		return fmt.Errorf("%w: bind address %q: %w", ErrInvalid, cfg.BindAddr, err)
	}
	switch {
	case cfg.BindPort == 0:
		cfg.BindPort = DefaultPort
	case cfg.BindPort == AnyPort:
		cfg.BindPort = 0
	case cfg.BindPort < 0 || cfg.BindPort > 65535:
		return fmt.Errorf("%w: bind port %d", ErrInvalid, cfg.BindPort)
	}
	for _, k := range cfg.SecretKeys {
		if err := validKeyLen(len(k)); err != nil {
			return fmt.Errorf("%w: secret key: %w", ErrInvalid, err)
		}
	}
	for _, s := range cfg.Join {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return fmt.Errorf("%w: join address %q must be host:port: %w", ErrInvalid, s, err)
		}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.JoinBackoffMin, 500*time.Millisecond)
	def(&cfg.JoinBackoffMax, 30*time.Second)
	def(&cfg.ReconnectInterval, 10*time.Second)
	def(&cfg.RequestTimeout, 2*time.Second)
	def(&cfg.ReapEndpointsAfter, 5*time.Minute)
	def(&cfg.ReclaimLeasesAfter, 30*time.Minute)
	def(&cfg.TombstoneTTL, 24*time.Hour)
	if cfg.EventBuffer <= 0 {
		cfg.EventBuffer = 1024
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Meta.Name == "" {
		cfg.Meta.Name = cfg.NodeName
	}
	if cfg.Meta.Name != cfg.NodeName {
		return fmt.Errorf("%w: metadata name %q differs from node name %q", ErrInvalid, cfg.Meta.Name, cfg.NodeName)
	}
	return nil
}

// tuneLAN sets memberlist's timing for a LAN where a dead node must be
// noticed by everyone within 5s. memberlist's LAN defaults take ~6s in a
// 3-node cluster; at 200 in-process members on a 2-core machine they take
// ~5s to converge and ~12s to see a failure.
//
//   - EnableCompression false (default true): LZW on every gossip packet
//     was most of the CPU at 200 members; a LAN does not need it.
//   - ProbeInterval 500ms (default 1s): each node probes one member per
//     interval, so some node probes any given member about twice a second.
//     ProbeTimeout 400ms (default 500ms) leaves 100ms for indirect probes,
//     plenty on a LAN. Shorter timeouts (250-350ms) caused false
//     suspicions and membership storms with 200 members on 2 cores;
//     Lifeguard's awareness still stretches them on an overloaded node.
//   - SuspicionMult 3 (default 4): a suspect is declared dead after
//     3 × max(1, log10 n) × 500ms: 1.5s below 10 nodes, 3.5s at 200, once
//     another node confirms the suspicion. SuspicionMaxTimeoutMult 2
//     (default 6) caps it at twice that without confirmation, which is what
//     a 3-node cluster with one node down may get.
//   - GossipInterval 80ms (default 200ms), GossipNodes 3: membership
//     changes and our records spread 2.5 times as fast.
//
// Small cluster: ≤ ~1s until a failed probe, 1.5s (≤ 3s) of suspicion,
// ~0.3s to tell everyone: ~2.5s measured, worst case under 5s. At 200
// members (fabricbench's in-process membership run, 2 cores): full view 1.3-2s (with the
// re-sync after join, see scheduleResync, and our own transport), failure
// seen by all 4-6.5s. The cost is about 2.5 times memberlist's default packet rate
// when there is news to gossip, still less CPU than the defaults with
// compression.
//   - PushPullInterval 10s (default 30s): the full-state exchange is the
//     anti-entropy of the replicated state, so a node that missed
//     broadcasts catches up within ~10s (memberlist scales it up past 32
//     nodes). The state is small: tens of bytes per record.
//   - TCPTimeout 3s (default 10s): bounds a push/pull and a reliable send
//     to a dead node, and so the votes of leases.
//   - DeadNodeReclaimTime 10s: a node restarted with a new address may
//     take its name back 10s after it was declared dead.
//   - HandoffQueueDepth 8192 (default 1024): the queue of received
//     messages waiting for memberlist's handler. When 200 members join at
//     once each learns ~200 alive records at a time, and on 2 cores the
//     default queue overflowed: hundreds of dropped alive messages per run,
//     and a member that missed one saw the full view only at the next
//     push/pull, 40s later (a 42s "full view" in 1 of 4 runs). A queued
//     message is a few hundred bytes.
//
// At 1,000 members memberlist sends every alive message it learns
// RetransmitMult (4) × ceil(log10(n+1)) = 16 times, and a joining node
// learns ~n of them from its first full-state exchange and sends those
// too: a join costs each other member ~32 alive messages (~150 bytes
// each), ~5 KB per host, and the joiner two full-state exchanges of ~150
// bytes per member each way. Cheap on real hosts; in one process
// (fabricbench's membership section) all n members' shares add up, so the
// cost of forming the cluster grows with n². RetransmitMult 1 (4 sends
// at 1,000) was tried and rejected: members missed alive messages and 200
// of them never reached a full view in 2 minutes (2 shared cores, load
// average 4 to 14 during the run).
func tuneLAN(mc *memberlist.Config) {
	mc.EnableCompression = false
	mc.ProbeInterval = 500 * time.Millisecond
	mc.ProbeTimeout = 400 * time.Millisecond
	mc.SuspicionMult = 3
	mc.SuspicionMaxTimeoutMult = 2
	mc.GossipInterval = 80 * time.Millisecond
	mc.GossipNodes = 3
	mc.PushPullInterval = 10 * time.Second
	mc.TCPTimeout = 3 * time.Second
	mc.DeadNodeReclaimTime = 10 * time.Second
	mc.HandoffQueueDepth = 8192
}

// slogWriter turns memberlist's "[LEVEL] memberlist: ..." lines into slog
// records.
type slogWriter struct {
	log    *slog.Logger
	onLine func(msg string) // sees every line, to count what memberlist only logs
}

var _ io.Writer = slogWriter{}

// memberlistLevels are memberlist's level prefixes.
var memberlistLevels = [...]struct {
	prefix string
	level  slog.Level
}{{"[DEBUG]", slog.LevelDebug}, {"[INFO]", slog.LevelInfo}, {"[WARN]", slog.LevelWarn}, {"[ERR]", slog.LevelError}}

func (w slogWriter) Write(p []byte) (int, error) {
	msg := string(bytes.TrimSpace(p))
	level := slog.LevelInfo
	for _, l := range memberlistLevels {
		if strings.HasPrefix(msg, l.prefix) {
			level, msg = l.level, strings.TrimSpace(strings.TrimPrefix(msg, l.prefix))
			break
		}
	}
	if w.onLine != nil {
		w.onLine(msg)
	}
	w.log.Log(context.Background(), level, msg)
	return len(p), nil
}

func newStdLogger(l *slog.Logger, onLine func(string)) *log.Logger {
	return log.New(slogWriter{log: l, onLine: onLine}, "", 0)
}
