//go:build ignore

/* sock.c: cgroup sock_addr hooks that serve host-local clients of published
 * ports without NAT. A process in the host namespace that connects or sends
 * to a published port on 127.0.0.0/8 or on a host address is pointed at the
 * endpoint behind it before a packet exists, so no translation, conntrack
 * entry or hairpin is needed, and the sandbox sees the host's real source.
 *
 *   connect4      TCP connect and UDP connect: rewrite the destination.
 *   sendmsg4      unconnected UDP sendto: rewrite the destination.
 *   recvmsg4      UDP recvfrom: a reply from the endpoint shows the
 *                 published address:port the socket sent to.
 *   getpeername4  getpeername on a rewritten TCP or connected UDP socket
 *                 shows the published address:port.
 *   sock_release  forgets a closed connected socket's reverse entry.
 *
 * The hooks are meant for the cgroup v2 root, where they see every process
 * on the machine: on a lab machine that includes processes of other
 * "hosts" (namespaces under the same cgroup tree) and of sandboxes, so a
 * rewrite happens only for sockets of the namespace in host_config.
 *
 * Reverse mapping. The reply path needs to know where the application
 * thought it was sending. A reverse index of `ports` (endpoint -> published
 * port) cannot answer that: two published ports may lead to one endpoint
 * port (-p 8080:80 -p 9090:80, or 127.0.0.1:8080 and 0.0.0.0:8080), and a
 * wildcard entry answers on every host address and every 127.x address.
 * So the forward hooks record, per socket, what they rewrote:
 * sock_reverse maps (socket cookie, endpoint address, endpoint port) to the
 * address and port the application asked for. Socket cookies are never
 * reused within a boot, so an entry can never answer for another socket.
 * The map is an LRU: unconnected UDP sockets have no way to remove their
 * entries, and each send refreshes its entry, so an active socket keeps it.
 * Connected sockets (TCP, connected UDP) remove theirs at close, so a high
 * connection rate does not push live UDP entries out. The one ambiguity
 * left is inherent: a single unconnected socket that sends to two published
 * ports leading to the same endpoint port sees replies from the one it sent
 * to last, and a socket that also talks to the endpoint directly sees those
 * replies from the published address too.
 *
 * Every hook returns 1 (allow): they only ever redirect, never refuse.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "fabric.h"

char __license[] SEC("license") = "GPL";

/* From <sys/socket.h>, which a BPF build lacks. */
#define AF_INET 2

#define MAX_SOCK_REVERSE 65536

/* (socket, endpoint address:port it was sent to). */
struct sock_rev_key {
	__u64 cookie;  /* bpf_get_socket_cookie */
	__be32 addr;   /* the endpoint's address */
	__be16 port;   /* the endpoint's port, network byte order */
	__u16 pad;     /* must be zero */
};

/* The published address:port the application used. */
struct sock_rev_value {
	__be32 addr;
	__be16 port;  /* network byte order */
	__u16 pad;    /* must be zero */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_SOCK_REVERSE);
	__type(key, struct sock_rev_key);
	__type(value, struct sock_rev_value);
} sock_reverse SEC(".maps");

/* sock_count is count_len for the socket hooks, with an atomic add: unlike
 * tc programs they run in process context with only migration disabled, so
 * a task preempted half-way through c->packets++ could lose another task's
 * increment of the same per-CPU cell. Bytes stay 0: a connect carries none,
 * and sock_addr hooks do not see the length of a datagram. */
static __always_inline void sock_count(enum reason reason)
{
	__u32 idx = counter_index(DIR_SOCKET, VERDICT_PASS, reason);
	struct counter *c = bpf_map_lookup_elem(&counters, &idx);

	if (c)
		__sync_fetch_and_add(&c->packets, 1);
}

/* in_host_netns reports whether the socket belongs to the host namespace.
 * A zero cookie (host_config not written yet) matches nothing. */
static __always_inline int in_host_netns(struct bpf_sock_addr *ctx)
{
	__u32 zero = 0;
	struct host_config *hc = bpf_map_lookup_elem(&host_config, &zero);

	return hc && hc->netns_cookie && hc->netns_cookie == bpf_get_netns_cookie(ctx);
}

static __always_inline int is_loopback(__be32 addr)
{
	return (bpf_ntohl(addr) >> 24) == 127;
}

/* published looks (proto, daddr, dport) up as a listening socket bound to
 * the published address would accept it: an exact entry first, then the
 * wildcard entry if daddr is one of the host's addresses or any address of
 * 127.0.0.0/8 (as 0.0.0.0 accepts 127.0.0.2; a 127.0.0.1 entry does not). */
static __always_inline struct port_target *published(__u8 proto, __be32 daddr, __be16 dport)
{
	struct port_target *t = lookup_port(proto, daddr, dport);
	struct port_key k = { .port = dport, .proto = proto };

	if (t || !is_loopback(daddr))
		return t;
	return bpf_map_lookup_elem(&ports, &k);
}

/* to_endpoint rewrites the destination of a host socket that is about to
 * connect or send to a published port, and records the reverse entry. */
static __always_inline void to_endpoint(struct bpf_sock_addr *ctx)
{
	__u32 proto = ctx->protocol;
	__be32 daddr = ctx->user_ip4;
	__be16 dport = (__be16)ctx->user_port;
	struct port_target *t;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return;
	if (!in_host_netns(ctx))
		return;
	t = published(proto, daddr, dport);
	if (!t)
		return;

	struct sock_rev_key k = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = t->addr,
		.port = t->port,
	};
	struct sock_rev_value v = { .addr = daddr, .port = dport };

	/* An LRU update makes room rather than fail; should it fail anyway the
	 * rewrite still happens, and only the reply's source shows the
	 * endpoint, which beats refusing the connection. */
	bpf_map_update_elem(&sock_reverse, &k, &v, BPF_ANY);
	ctx->user_ip4 = k.addr;
	ctx->user_port = k.port;
	sock_count(REASON_SOCK_REWRITE);
}

/* to_published undoes to_endpoint for an address the application is about
 * to see (a datagram's source, the socket's peer). No namespace check: an
 * entry exists only for a socket that to_endpoint rewrote. */
static __always_inline void to_published(struct bpf_sock_addr *ctx)
{
	struct sock_rev_key k = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
	};
	struct sock_rev_value *v = bpf_map_lookup_elem(&sock_reverse, &k);

	if (!v)
		return;
	ctx->user_ip4 = v->addr;
	ctx->user_port = v->port;
	sock_count(REASON_SOCK_REPLY);
}

SEC("cgroup/connect4")
int sock_connect4(struct bpf_sock_addr *ctx)
{
	to_endpoint(ctx);
	return 1;
}

SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	to_endpoint(ctx);
	return 1;
}

SEC("cgroup/recvmsg4")
int sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	to_published(ctx);
	return 1;
}

SEC("cgroup/getpeername4")
int sock_getpeername4(struct bpf_sock_addr *ctx)
{
	to_published(ctx);
	return 1;
}

/* A connected socket's peer is the endpoint to_endpoint chose, so its
 * reverse entry can be found and removed when the socket goes away; an
 * unconnected UDP socket has no peer and its entries age out of the LRU. */
SEC("cgroup/sock_release")
int sock_release(struct bpf_sock *sk)
{
	struct sock_rev_key k = {};

	if (sk->family != AF_INET || !sk->dst_ip4)
		return 1;
	if (sk->protocol != IPPROTO_TCP && sk->protocol != IPPROTO_UDP)
		return 1;
	k.cookie = bpf_get_socket_cookie(sk);
	k.addr = sk->dst_ip4;
	k.port = sk->dst_port;
	bpf_map_delete_elem(&sock_reverse, &k);
	return 1;
}
