//go:build ignore

/* sockredir.c: socket-level redirection for TCP connections between the
 * host and a fabric sandbox on the same host. The bytes of such a
 * connection otherwise cross the host's TCP stack, a veth and the
 * sandbox's TCP stack; here each sendmsg is moved straight into the peer
 * socket's receive queue (sk_msg, bpf_msg_redirect_hash with
 * BPF_F_INGRESS), which is allowed across network namespaces for local
 * sockets. The TCP connection itself stays established underneath, so
 * close, shutdown and reset behave as TCP does.
 *
 *   sockops        on the cgroup v2 root: puts the two ends of a host ->
 *                  sandbox connection into redir_socks when they become
 *                  established, and nothing else.
 *   sk_msg         on redir_socks: moves each sendmsg to the peer.
 *
 * Which connections. Only ones a host process opens to a local endpoint:
 * the client is a socket of the host namespace (host_config's cookie) whose
 * peer is in endpoint_by_ip, which is the case for a published port (the
 * connect4 hook of sock.c rewrote the destination) and for a connection to
 * the endpoint's address itself. Its server side is accepted in a sandbox;
 * it joins only if the client left its tuple in redir_pending first (the
 * client's ACTIVE_ESTABLISHED runs before it sends the ACK whose arrival
 * runs the server's PASSIVE_ESTABLISHED), so no socket of a connection
 * fabric did not see from the host side ever enters the map. Sandbox to
 * sandbox stays on the tc path, where every packet meets the isolation
 * checks and the counters.
 *
 * Keys. struct redir_key is a socket's own view: local address and port,
 * then the peer's, ports in network byte order. The two ends of one
 * connection are each other's reverse, and being in different namespaces
 * does not matter: the host side is (gateway, ephemeral, endpoint, port),
 * the sandbox side (endpoint, port, gateway, ephemeral), and only sockets
 * this program admitted are in the map.
 *
 * Ordering. A socket's bytes must all go one way: if a first sendmsg went
 * through TCP (the peer had not joined yet) and a later one were
 * redirected, the receiver would read the later bytes first (it reads its
 * redirect queue before its TCP queue). So the first sendmsg decides, and
 * redir_state (socket storage) remembers: redirect from the first byte, or
 * never. A socket whose peer leaves the map (closed, or an endpoint that was
 * removed) falls back to TCP, which then ends the connection as TCP would.
 * The other way round is safe: a receiver reads what was redirected to it
 * before what came through TCP, so a socket may leave redirection for TCP
 * at any time, and then stays there.
 *
 * Memory. The kernel gives redirected bytes no flow control: they are
 * queued on the receiving socket, charged to TCP's memory, however slowly
 * it reads (no window), and past the pressure limits the sender gets
 * ENOMEM. So redirection stops, connection by connection and for good,
 * once TCP's memory in use (the kernel's tcp_memory_allocated, read
 * through the sending socket's protocol with CO-RE) reaches
 * redir_config.mem_max_pages, which the agent sets below tcp_mem's
 * pressure-free limit: those connections go on over TCP, whose windows
 * bound them.
 */
#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "fabric.h"

char __license[] SEC("license") = "GPL";

/* From <sys/socket.h>, which a BPF build lacks. */
#define AF_INET 2
#define AF_INET6 10

#define MAX_REDIR_SOCKS 65536
#define MAX_REDIR_PENDING 16384

/* A socket's own view of its connection. */
struct redir_key {
	__be32 local_ip;
	__be32 remote_ip;
	__be16 local_port;  /* network byte order */
	__be16 remote_port; /* network byte order */
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, MAX_REDIR_SOCKS);
	__type(key, struct redir_key);
	__type(value, __u64);
} redir_socks SEC(".maps");

/* The sandbox ends host clients are waiting for, by the key the sandbox
 * socket will have; value: when (bpf_ktime_get_ns). An LRU, so entries of
 * handshakes that never complete on the server (it was killed, a SYN
 * cookie) age out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_REDIR_PENDING);
	__type(key, struct redir_key);
	__type(value, __u64);
} redir_pending SEC(".maps");

enum redir_mode {
	REDIR_UNDECIDED = 0,
	REDIR_ON = 1,  /* every sendmsg is redirected while the peer is there */
	REDIR_OFF = 2, /* the first went through TCP: so do all the others */
};

struct redir_state {
	__u32 mode; /* enum redir_mode */
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct redir_state);
} redir_state SEC(".maps");

/* redir_stats: per-CPU sums the Go side reports as counters. */
enum redir_stat {
	REDIR_STAT_CLIENTS = 0,    /* host sockets admitted */
	REDIR_STAT_SERVERS = 1,    /* sandbox sockets admitted */
	REDIR_STAT_MSGS = 2,       /* sendmsg calls redirected */
	REDIR_STAT_BYTES = 3,      /* their bytes */
	REDIR_STAT_PASSED = 4,     /* sendmsg calls left to TCP */
	REDIR_STAT_ADD_FAILED = 5, /* sock_hash_update refused a socket */
	REDIR_STAT_MEM_OFF = 6,    /* sockets that left redirection for TCP's memory in use */
	REDIR_STAT_MAX = 8,
};

/* What the agent tells the programs: the single entry of redir_config. */
struct redir_settings {
	__u64 mem_max_pages; /* redirect only while TCP's memory in use is below this; 0: never */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct redir_settings);
} redir_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, REDIR_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} redir_stats SEC(".maps");

/* Never called: puts the enums into BTF for bpf2go. */
__attribute__((used)) static int bpf2go_redir_enums(enum redir_mode m, enum redir_stat s)
{
	return m + s;
}

/* Atomic: sk_msg runs in process context, where another task may preempt
 * this one half-way through an increment of the same per-CPU cell. */
static __always_inline void redir_add(__u32 which, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&redir_stats, &which);

	if (v)
		__sync_fetch_and_add(v, n);
}

static __always_inline __u64 host_netns_cookie(void)
{
	__u32 zero = 0;
	struct host_config *hc = bpf_map_lookup_elem(&host_config, &zero);

	return hc ? hc->netns_cookie : 0;
}

/* An IPv4 connection may be on a dual-stack socket (a server listening on
 * [::], as iperf3 and many others do): family AF_INET6, addresses
 * IPv4-mapped (::ffff:a.b.c.d). The kernel keeps the IPv4 addresses of such
 * a socket where local_ip4 and remote_ip4 read them, so only the check
 * differs. Word by word: the context allows only 32-bit loads of these
 * fields. */
static __always_inline int v4_mapped(__u32 w0, __u32 w1, __u32 w2)
{
	return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0xffff);
}

/* ops_key is the socket's key; -1 if it is not IPv4 (or IPv4-mapped).
 * local_port is in host byte order; remote_port holds the port in network
 * byte order in its upper 16 bits on little-endian machines (the kernel
 * shifts it there); a 32-bit load and a shift read it on every kernel. The
 * same goes for struct sk_msg_md. */
static __always_inline int ops_key(struct bpf_sock_ops *ops, struct redir_key *k)
{
	__u32 family = ops->family;

	if (family == AF_INET6 &&
	    (!v4_mapped(ops->local_ip6[0], ops->local_ip6[1], ops->local_ip6[2]) ||
	     !v4_mapped(ops->remote_ip6[0], ops->remote_ip6[1], ops->remote_ip6[2])))
		return -1;
	if (family != AF_INET && family != AF_INET6)
		return -1;
	k->local_ip = ops->local_ip4;
	k->remote_ip = ops->remote_ip4;
	k->local_port = bpf_htons((__u16)ops->local_port);
	k->remote_port = (__be16)(ops->remote_port >> 16);
	return 0;
}

/* msg_peer_key is the key of the peer of the socket sending msg: its own,
 * reversed. */
static __always_inline int msg_peer_key(struct sk_msg_md *msg, struct redir_key *peer)
{
	__u32 family = msg->family;

	if (family == AF_INET6 &&
	    (!v4_mapped(msg->local_ip6[0], msg->local_ip6[1], msg->local_ip6[2]) ||
	     !v4_mapped(msg->remote_ip6[0], msg->remote_ip6[1], msg->remote_ip6[2])))
		return -1;
	if (family != AF_INET && family != AF_INET6)
		return -1;
	peer->local_ip = msg->remote_ip4;
	peer->remote_ip = msg->local_ip4;
	peer->local_port = (__be16)(msg->remote_port >> 16);
	peer->remote_port = bpf_htons((__u16)msg->local_port);
	return 0;
}

static __always_inline void reverse_key(const struct redir_key *k, struct redir_key *r)
{
	r->local_ip = k->remote_ip;
	r->remote_ip = k->local_ip;
	r->local_port = k->remote_port;
	r->remote_port = k->local_port;
}

/* admit puts the socket into redir_socks with a fresh decision state. */
static __always_inline int admit(struct bpf_sock_ops *ops, struct redir_key *k)
{
	struct bpf_sock *sk = ops->sk;

	if (!sk)
		return -1;
	if (!bpf_sk_storage_get(&redir_state, sk, 0, BPF_SK_STORAGE_GET_F_CREATE))
		return -1;
	if (bpf_sock_hash_update(ops, &redir_socks, k, BPF_ANY)) {
		redir_add(REDIR_STAT_ADD_FAILED, 1);
		return -1;
	}
	return 0;
}

/* A host socket connected to a local endpoint: admit it, and tell the
 * sandbox end to follow. */
static __always_inline void client_established(struct bpf_sock_ops *ops, __u64 host)
{
	struct redir_key k = {}, peer = {};
	__u64 now;

	if (bpf_get_netns_cookie(ops) != host)
		return;
	if (ops_key(ops, &k))
		return;
	if (!bpf_map_lookup_elem(&endpoint_by_ip, &k.remote_ip))
		return;
	reverse_key(&k, &peer);
	now = bpf_ktime_get_ns();
	/* Pending first: the server may join as soon as the ACK leaves. */
	if (bpf_map_update_elem(&redir_pending, &peer, &now, BPF_ANY))
		return;
	if (admit(ops, &k)) {
		bpf_map_delete_elem(&redir_pending, &peer);
		return;
	}
	redir_add(REDIR_STAT_CLIENTS, 1);
}

/* A connection accepted in a sandbox: admitted only if a host client of
 * this agent is waiting for exactly this tuple on a local endpoint. */
static __always_inline void server_established(struct bpf_sock_ops *ops, __u64 host)
{
	struct redir_key k = {};

	if (bpf_get_netns_cookie(ops) == host)
		return;
	if (ops_key(ops, &k))
		return;
	if (!bpf_map_lookup_elem(&redir_pending, &k))
		return;
	bpf_map_delete_elem(&redir_pending, &k);
	if (!bpf_map_lookup_elem(&endpoint_by_ip, &k.local_ip))
		return;
	if (admit(ops, &k) == 0)
		redir_add(REDIR_STAT_SERVERS, 1);
}

SEC("sockops")
int sock_ops(struct bpf_sock_ops *ops)
{
	__u64 host;

	if (ops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && ops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	host = host_netns_cookie();
	if (!host) /* host_config not written yet */
		return 1;
	if (ops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		client_established(ops, host);
	else
		server_established(ops, host);
	return 1;
}

/* CO-RE views of the kernel structures tcp_mem_pages reads: the offsets
 * come from the running kernel's BTF at load time. */
struct proto___fabric {
	long *memory_allocated; /* atomic_long_t *: pages */
} __attribute__((preserve_access_index));

struct sock_common___fabric {
	struct proto___fabric *skc_prot;
} __attribute__((preserve_access_index));

struct sock___fabric {
	struct sock_common___fabric __sk_common;
} __attribute__((preserve_access_index));

/* mem_ok reports whether TCP's memory in use, in pages, is below the
 * agent's limit. A struct sock begins every tcp_sock. */
static __always_inline int mem_ok(struct bpf_sock *sk)
{
	__u32 zero = 0;
	struct redir_settings *cfg = bpf_map_lookup_elem(&redir_config, &zero);
	struct sock___fabric *s = (void *)bpf_skc_to_tcp_sock(sk);

	long pages;

	if (!cfg || !s)
		return 0;
	/* Per-CPU caches of forward allocations can leave the shared
	 * counter below zero for a while: the kernel reads that as 0. */
	pages = *s->__sk_common.skc_prot->memory_allocated;
	if (pages < 0)
		pages = 0;
	return (__u64)pages < cfg->mem_max_pages;
}

/* Runs only for sockets in redir_socks. */
SEC("sk_msg")
int sock_msg(struct sk_msg_md *msg)
{
	struct redir_key peer = {};
	struct redir_state *st;
	struct bpf_sock *sk = msg->sk;
	__u32 size = msg->size;

	if (!sk)
		return SK_PASS;
	st = bpf_sk_storage_get(&redir_state, sk, 0, 0);
	if (!st || st->mode == REDIR_OFF || msg_peer_key(msg, &peer))
		goto pass;
	if (!mem_ok(sk)) {
		st->mode = REDIR_OFF;
		redir_add(REDIR_STAT_MEM_OFF, 1);
		goto pass;
	}
	if (bpf_msg_redirect_hash(msg, &redir_socks, &peer, BPF_F_INGRESS) == SK_PASS) {
		st->mode = REDIR_ON;
		redir_add(REDIR_STAT_MSGS, 1);
		redir_add(REDIR_STAT_BYTES, size);
		return SK_PASS;
	}
	if (st->mode == REDIR_UNDECIDED)
		st->mode = REDIR_OFF;
pass:
	redir_add(REDIR_STAT_PASSED, 1);
	return SK_PASS;
}
