/* conntrack.h: fabric's connection tracking over the `ct` and `ct_frag`
 * maps (layouts and the model in fabric.h): timeouts, lookups, the state
 * both entries of a connection share, and creating a connection whose
 * mapping is fixed. Allocating a masquerade port is uplink.c's.
 */
#ifndef FABRIC_CONNTRACK_H
#define FABRIC_CONNTRACK_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "fabric.h"
#include "packet.h"

#define EEXIST 17 /* errno, which a BPF build has no header for */

/* map_err is the errno a map update or delete returned, as an int: 6.1
 * inlines these calls into the map's own function, which returns an int
 * whose upper 32 bits arrive as garbage (-EEXIST reads 0xffffffef; newer
 * kernels return long), so only the low half may be compared. */
typedef int map_err;

#define NSEC 1000000000ULL
#define CT_TIMEOUT_TCP_SYN (5 * NSEC)         /* until the reply direction is seen */
#define CT_TIMEOUT_TCP_SYN_RECV (60 * NSEC)   /* answered SYN, until the original side acknowledges */
#define CT_TIMEOUT_TCP_EST (6 * 3600 * NSEC)  /* idle established connection */
#define CT_TIMEOUT_TCP_FIN (120 * NSEC)       /* half closed */
#define CT_TIMEOUT_TCP_CLOSE (10 * NSEC)      /* closed both ways, or reset */
#define CT_TIMEOUT_UDP (60 * NSEC)
#define CT_TIMEOUT_UDP_REPLIED (120 * NSEC)
#define CT_TIMEOUT_ICMP (30 * NSEC)
#define CT_FRAG_TIMEOUT (30 * NSEC)           /* the usual IPv4 reassembly time */
/* last_seen is written at most this often per direction: the timeouts are
 * seconds to hours, and a write per packet would bounce the entry's cache
 * line between CPUs for nothing. */
#define CT_REFRESH_NS NSEC

static __always_inline __u64 ct_timeout(__u8 proto, __u8 flags)
{
	if (proto == IPPROTO_TCP) {
		if ((flags & CT_F_RST) || (flags & (CT_F_FIN_ORIG | CT_F_FIN_REPLY)) == (CT_F_FIN_ORIG | CT_F_FIN_REPLY))
			return CT_TIMEOUT_TCP_CLOSE;
		if (flags & (CT_F_FIN_ORIG | CT_F_FIN_REPLY))
			return CT_TIMEOUT_TCP_FIN;
		if ((flags & (CT_F_REPLIED | CT_F_SYN_SENT)) == (CT_F_REPLIED | CT_F_SYN_SENT))
			return CT_TIMEOUT_TCP_SYN_RECV;
		if (flags & CT_F_REPLIED)
			return CT_TIMEOUT_TCP_EST;
		return CT_TIMEOUT_TCP_SYN;
	}
	if (proto == IPPROTO_UDP)
		return (flags & CT_F_REPLIED) ? CT_TIMEOUT_UDP_REPLIED : CT_TIMEOUT_UDP;
	return CT_TIMEOUT_ICMP;
}

/* ct_expired: an entry not refreshed within its timeout is gone, whatever
 * the LRU still holds. A last_seen in the future (written from Go) is
 * fresh. */
static __always_inline int ct_expired(const struct ct_entry *e, __u8 proto, __u64 now)
{
	__u64 seen = e->last_seen;

	return now > seen && now - seen > ct_timeout(proto, e->flags);
}

static __always_inline void ct_key_of(struct ct_key *k, const struct pkt *p, __u8 dir)
{
	k->saddr = p->saddr;
	k->daddr = p->daddr;
	k->sport = p->sport;
	k->dport = p->dport;
	k->proto = p->proto;
	k->dir = dir;
	k->pad = 0;
}

/* ct_lookup returns the live entry for k, or NULL. */
static __always_inline struct ct_entry *ct_lookup(const struct ct_key *k, __u64 now)
{
	struct ct_entry *e = bpf_map_lookup_elem(&ct, k);

	if (!e || ct_expired(e, k->proto, now))
		return 0;
	return e;
}

/* ct_next_flags is the connection's state after a packet with tcp_flags
 * went the entry's direction. A SYN on a connection that had closed is a
 * new connection on the same tuple: it starts over, keeping the mapping. */
static __always_inline __u8 ct_next_flags(__u8 flags, __u8 reply, __u8 proto, __u8 tcp_flags)
{
	if (proto == IPPROTO_TCP) {
		if ((tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN && !reply &&
		    (flags & (CT_F_RST | CT_F_FIN_ORIG | CT_F_FIN_REPLY)))
			flags = CT_F_SYN_SENT;
		/* The handshake's third packet: the connection is open. */
		if (!reply && (tcp_flags & TCP_ACK) && (flags & CT_F_REPLIED))
			flags &= ~CT_F_SYN_SENT;
		if (tcp_flags & TCP_RST)
			flags |= CT_F_RST;
		if (tcp_flags & TCP_FIN)
			flags |= reply ? CT_F_FIN_REPLY : CT_F_FIN_ORIG;
	}
	if (reply)
		flags |= CT_F_REPLIED;
	return flags;
}

/* ct_initial_flags is the state of a connection p starts. */
static __always_inline __u8 ct_initial_flags(const struct pkt *p)
{
	if (p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)
		return CT_F_SYN_SENT;
	return 0;
}

/* ct_unanswered: the connection still counts against its source's quota
 * (a TCP handshake not completed, anything else not replied to). */
static __always_inline int ct_unanswered(__u8 proto, __u8 flags)
{
	if (proto == IPPROTO_TCP)
		return !(flags & CT_F_REPLIED) || (flags & CT_F_SYN_SENT);
	return !(flags & CT_F_REPLIED);
}

/* ct_quota_take counts a new connection from src against its quota of
 * unanswered ones (policy.ct_pending_max per CT_PENDING_WINDOW). Returns
 * -1 if the source is over it: the caller drops the packet. A window is
 * as long as an unanswered SYN lives, so the count bounds what the source
 * holds in the table at any time to about twice the quota. Races between
 * CPUs make the count approximate, never unbounded. */
#define CT_PENDING_WINDOW CT_TIMEOUT_TCP_SYN
static __always_inline int ct_quota_take(__be32 src, __u64 now)
{
	struct ct_pending fresh = { .since = now, .count = 1 };
	struct ct_pending *q;
	struct host_policy *pol;
	__u32 zero = 0;

	pol = bpf_map_lookup_elem(&policy, &zero);
	if (!pol || !pol->ct_pending_max)
		return 0;
	q = bpf_map_lookup_elem(&ct_quota, &src);
	if (!q) {
		bpf_map_update_elem(&ct_quota, &src, &fresh, BPF_ANY);
		return 0;
	}
	if (now - q->since > CT_PENDING_WINDOW) {
		q->since = now;
		q->count = 1;
		return 0;
	}
	if (q->count >= (__s64)pol->ct_pending_max)
		return -1;
	__sync_fetch_and_add(&q->count, 1);
	return 0;
}

/* ct_quota_give takes an answered (or never stored) connection off src's
 * count. */
static __always_inline void ct_quota_give(__be32 src)
{
	struct ct_pending *q = bpf_map_lookup_elem(&ct_quota, &src);

	if (q && q->count > 0)
		__sync_fetch_and_add(&q->count, -1);
}

/* ct_refresh records a packet of the connection: state and last_seen, in
 * this entry and in its pair, whose key is the reverse of this entry's
 * translated tuple. Both entries must age together, or a connection whose
 * traffic goes one way only would lose its return path. */
static __always_inline void ct_refresh(const struct ct_key *k, struct ct_entry *e, const struct pkt *p, __u64 now)
{
	__u8 flags = ct_next_flags(e->flags, e->reply, p->proto, p->tcp_flags);
	struct ct_key rk = {};
	struct ct_entry *r;

	if (flags == e->flags && now - e->last_seen < CT_REFRESH_NS)
		return;
	/* Answered now: off the quota of the side that opened it, which is
	 * the original entry's key source or the reply entry's value
	 * destination. */
	if (ct_unanswered(k->proto, e->flags) && !ct_unanswered(k->proto, flags))
		ct_quota_give(e->reply ? e->daddr : k->saddr);
	e->flags = flags;
	e->last_seen = now;

	rk.saddr = e->daddr;
	rk.daddr = e->saddr;
	rk.sport = e->dport;
	rk.dport = e->sport;
	rk.proto = k->proto;
	rk.dir = e->rev_dir;
	r = bpf_map_lookup_elem(&ct, &rk);
	if (r && r->kind == e->kind && r->reply != e->reply && r->saddr == k->daddr && r->daddr == k->saddr &&
	    r->sport == k->dport && r->dport == k->sport) {
		r->flags = flags;
		r->last_seen = now;
	}
}

static __always_inline int ct_same(const struct ct_entry *a, const struct ct_entry *b)
{
	return a->kind == b->kind && a->reply == b->reply && a->saddr == b->saddr && a->daddr == b->daddr &&
	       a->sport == b->sport && a->dport == b->dport;
}

/* ct_create stores a connection whose mapping is fixed (DNAT, hairpin):
 * the reply entry first, refusing to take a reply tuple a live connection
 * with another mapping holds, then the original entry. Two CPUs creating
 * the same connection write the same values, so no race matters. Returns
 * 0, or -1 if the connection could not be stored. */
static __always_inline int ct_create(const struct ct_key *ok, const struct ct_entry *ov, const struct ct_key *rk,
				     const struct ct_entry *rv, __u64 now)
{
	struct ct_entry *old;
	map_err err;

	err = bpf_map_update_elem(&ct, rk, rv, BPF_NOEXIST);
	if (!err)
		ct_stat(CT_STAT_INSERTS);
	if (err == -EEXIST) {
		old = bpf_map_lookup_elem(&ct, rk);
		if (old && !ct_expired(old, rk->proto, now) && !ct_same(old, rv))
			return -1;
		err = bpf_map_update_elem(&ct, rk, rv, BPF_ANY);
	}
	if (err)
		return -1;
	err = bpf_map_update_elem(&ct, ok, ov, BPF_NOEXIST);
	if (!err)
		ct_stat(CT_STAT_INSERTS);
	else if (err == -EEXIST)
		err = bpf_map_update_elem(&ct, ok, ov, BPF_ANY);
	if (err) {
		if (!bpf_map_delete_elem(&ct, rk))
			ct_stat(CT_STAT_DELETES);
		return -1;
	}
	return 0;
}

/* ct_open_port stores a new connection from client to the published port
 * pt, which keeps the client's source port: the original entry (key ok,
 * value returned in ov) sends the packet to pt; the reply entry, keyed
 * from pt back to client, restores the address and port the client sent
 * to. kind names the path that made it; rev_dir is the direction of ok,
 * where replies find the original entry. The connection counts against
 * the sending source's quota. Returns 0, or -1 with *why set to the
 * reason the packet must be dropped. */
static __always_inline int ct_open_port(const struct pkt *p, const struct ct_key *ok, const struct port_target *pt,
					__be32 client, __u8 kind, __u8 rev_dir, __u64 now, struct ct_entry *ov,
					enum reason *why)
{
	struct ct_entry rv = {};
	struct ct_key rk = {};

	ov->last_seen = now;
	ov->saddr = client;
	ov->daddr = pt->addr;
	ov->sport = p->sport;
	ov->dport = pt->port;
	ov->kind = kind;
	ov->rev_dir = CT_DIR_OUT;
	rk.saddr = pt->addr;
	rk.daddr = client;
	rk.sport = pt->port;
	rk.dport = p->sport;
	rk.proto = p->proto;
	rk.dir = CT_DIR_OUT;
	rv.last_seen = now;
	rv.saddr = p->daddr;
	rv.daddr = p->saddr;
	rv.sport = p->dport;
	rv.dport = p->sport;
	rv.kind = kind;
	rv.reply = 1;
	rv.rev_dir = rev_dir;
	ov->flags = rv.flags = ct_initial_flags(p);
	if (ct_quota_take(p->saddr, now)) {
		*why = REASON_CT_QUOTA;
		return -1;
	}
	if (ct_create(ok, ov, &rk, &rv, now)) {
		ct_quota_give(p->saddr);
		*why = REASON_CT_FULL;
		return -1;
	}
	return 0;
}

/* ---- Fragments ---- */

static __always_inline void frag_record(const struct pkt *p, __u8 dir, __be32 saddr, __be32 daddr, __u8 kind,
					__u8 reply, __u64 now)
{
	struct frag_key k = { .saddr = p->saddr, .daddr = p->daddr, .id = p->id, .proto = p->proto, .dir = dir };
	struct frag_entry v = { .last_seen = now, .saddr = saddr, .daddr = daddr, .kind = kind, .reply = reply };

	bpf_map_update_elem(&ct_frag, &k, &v, BPF_ANY);
}

static __always_inline struct frag_entry *frag_lookup(const struct pkt *p, __u8 dir, __u64 now)
{
	struct frag_key k = { .saddr = p->saddr, .daddr = p->daddr, .id = p->id, .proto = p->proto, .dir = dir };
	struct frag_entry *f = bpf_map_lookup_elem(&ct_frag, &k);

	if (!f || (now > f->last_seen && now - f->last_seen > CT_FRAG_TIMEOUT))
		return 0;
	return f;
}

#endif /* FABRIC_CONNTRACK_H */
