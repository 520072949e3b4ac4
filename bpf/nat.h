/* nat.h: fabric's NAT core, shared by the endpoint program (hairpin) and
 * the uplink programs (masquerade, published ports), at tc and at XDP.
 *
 * Everything here works on (data, data_end) packet pointers, so that one
 * parser, one conntrack and one rewriter serve both hooks. The rewriter
 * changes addresses, ports and the IPv4 header checksum in place and
 * returns what the L4 checksum still needs (RFC 1624 differences); the
 * caller applies that: XDP directly (a received frame always carries a full
 * checksum), tc through bpf_l4_csum_replace, because at tc a TCP or UDP
 * checksum may be CHECKSUM_PARTIAL (the field then holds only the pseudo
 * header's sum and the device completes it) or backed by a CHECKSUM_COMPLETE
 * skb->csum, which only the helper knows about and keeps right.
 *
 * The map layouts and the conntrack model are described in fabric.h.
 */
#ifndef FABRIC_NAT_H
#define FABRIC_NAT_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "fabric.h"

#define EEXIST 17 /* errno, which a BPF build has no header for */

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define IPV4_MAX_HLEN 60

#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

#define NSEC 1000000000ULL
#define CT_TIMEOUT_TCP_SYN (60 * NSEC)        /* until the reply direction is seen */
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

/* Source ports tried for one new masqueraded connection. */
#define NAT_ATTEMPTS 32

/* ---- Checksums (RFC 1071, RFC 1624) ----
 *
 * Values are taken as they sit in the packet (network byte order, loaded
 * natively) and results are stored the same way: the one's complement sum
 * does not depend on byte order as long as every word is read alike. A
 * "diff" is a 32-bit one's complement sum of ~old + new words, the form
 * the kernel's csum helpers (and bpf_l4_csum_replace with size 0) take. */

static __always_inline __u32 csum_add(__u32 a, __u32 b)
{
	a += b;
	return a + (a < b);
}

static __always_inline __u32 csum_diff32(__u32 diff, __u32 from, __u32 to)
{
	return csum_add(csum_add(diff, ~from), to);
}

static __always_inline __u32 csum_diff16(__u32 diff, __u16 from, __u16 to)
{
	return csum_add(csum_add(diff, (__u16)~from), to);
}

/* csum_fold folds a 32-bit sum to 16 bits and complements it. */
static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* csum_apply is the checksum field `check` after the changes in diff
 * (RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m')), as the kernel computes it. */
static __always_inline __u16 csum_apply(__u16 check, __u32 diff)
{
	return csum_fold(csum_add(diff, ~(__u32)check));
}

/* ---- Parsing ---- */

enum parse_status {
	PKT_TUPLE,      /* TCP, UDP or ICMP echo with its header: p holds the tuple */
	PKT_ICMP_ERROR, /* ICMP error quoting a TCP, UDP or echo header: p holds the quoted tuple too */
	PKT_FRAGMENT,   /* a fragment after the first: addresses, id and protocol only */
	PKT_SHORT_L4,   /* the L4 header is cut short (a tiny first fragment, or a lie) */
	PKT_NO_TUPLE,   /* another protocol, or ICMP that is neither echo nor a usable error */
	PKT_MALFORMED,  /* not a sound IPv4 header */
};

/* What the NAT needs of an IPv4 packet. Offsets are from the start of the
 * Ethernet header and always within the first ETH_HLEN + 60 + 8 + 60 + 20
 * bytes. For an ICMP error, the inner_* fields describe the quoted packet,
 * which is one this host sent or forwarded, so its tuple is a flow's as it
 * left (inner_saddr is the side that sent it). */
struct pkt {
	__be32 saddr;
	__be32 daddr;
	__be16 sport; /* ct_key convention: ICMP echo id in sport for requests, dport for replies */
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 first_frag;  /* MF set, offset 0: later fragments follow */
	__be16 id;        /* IPv4 identification */
	__u16 l4_off;
	__u16 csum_off;   /* the L4 checksum (TCP, UDP, ICMP); 0 if none is in reach */

	/* PKT_ICMP_ERROR only */
	__be32 inner_saddr;
	__be32 inner_daddr;
	__be16 inner_sport;
	__be16 inner_dport;
	__u8 inner_proto;
	__u8 inner_icmp_type;
	__u16 inner_off;      /* the quoted IPv4 header */
	__u16 inner_l4_off;
	__u16 inner_csum_off; /* the quoted L4 checksum, 0 if cut off by the quote */
};

/* l4_need is how much of an L4 header parsing reads. */
static __always_inline __u32 l4_need(__u8 proto)
{
	switch (proto) {
	case IPPROTO_TCP:
		return 20;
	case IPPROTO_UDP:
	case IPPROTO_ICMP:
		return 8;
	}
	return 0;
}

/* ICMP_ERROR_NEED is what an ICMP error needs past its own 8 bytes: the
 * quoted IPv4 header with options and a TCP header up to its checksum. */
#define ICMP_ERROR_NEED (IPV4_MAX_HLEN + 18)

static __always_inline int icmp_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED || type == ICMP_PARAMETERPROB;
}

/* parse_echo reads the id of an ICMP echo at l4 into the tuple's ports. */
static __always_inline int parse_echo(const __u8 *l4, __be16 *sport, __be16 *dport)
{
	__be16 id = *(const __be16 *)(l4 + 4);

	if (l4[1] != 0)
		return 0;
	if (l4[0] == ICMP_ECHO) {
		*sport = id;
		*dport = 0;
		return 1;
	}
	if (l4[0] == ICMP_ECHOREPLY) {
		*sport = 0;
		*dport = id;
		return 1;
	}
	return 0;
}

/* parse_icmp_error reads the packet an ICMP error quotes, which starts 8
 * bytes into the ICMP header at l4_off. Only what NAT can map back counts:
 * an unfragmented or first-fragment TCP, UDP or echo with its ports. */
static __always_inline int parse_icmp_error(void *data, void *data_end, struct pkt *p)
{
	__u32 off = p->l4_off;
	struct iphdr *in;
	__u8 *l4;
	__u32 hlen;

	if (off > ETH_HLEN + IPV4_MAX_HLEN)
		return PKT_NO_TUPLE;
	in = data + off + 8;
	if ((void *)(in + 1) > data_end)
		return PKT_NO_TUPLE;
	if (in->version != 4 || in->ihl < 5)
		return PKT_NO_TUPLE;
	if (in->frag_off & bpf_htons(IP_OFFSET))
		return PKT_NO_TUPLE;
	hlen = in->ihl * 4;
	l4 = (void *)in + hlen;
	if ((void *)(l4 + 8) > data_end)
		return PKT_NO_TUPLE;

	p->inner_saddr = in->saddr;
	p->inner_daddr = in->daddr;
	p->inner_proto = in->protocol;
	p->inner_off = off + 8;
	p->inner_l4_off = off + 8 + hlen;
	p->inner_csum_off = 0;
	switch (in->protocol) {
	case IPPROTO_TCP:
		p->inner_sport = *(__be16 *)l4;
		p->inner_dport = *(__be16 *)(l4 + 2);
		/* The quote need only hold 8 bytes; TCP's checksum is at 16. */
		if ((void *)(l4 + 18) <= data_end)
			p->inner_csum_off = p->inner_l4_off + 16;
		break;
	case IPPROTO_UDP:
		p->inner_sport = *(__be16 *)l4;
		p->inner_dport = *(__be16 *)(l4 + 2);
		p->inner_csum_off = p->inner_l4_off + 6;
		break;
	case IPPROTO_ICMP:
		if (!parse_echo(l4, &p->inner_sport, &p->inner_dport))
			return PKT_NO_TUPLE;
		p->inner_icmp_type = l4[0];
		p->inner_csum_off = p->inner_l4_off + 2;
		break;
	default:
		return PKT_NO_TUPLE;
	}
	return PKT_ICMP_ERROR;
}

/* parse_ipv4 fills p from the IPv4 packet after the Ethernet header at
 * data. len is the whole frame's length (skb->len at tc), which tot_len
 * must fit in; data_end may be shorter at tc, where the caller pulled in
 * only the headers (tc_pull_headers). */
static __always_inline int parse_ipv4(void *data, void *data_end, __u32 len, struct pkt *p)
{
	struct iphdr *ip = data + ETH_HLEN;
	__u32 hlen, tot, l4len;
	__u16 frag;
	__u8 *l4;

	if ((void *)(ip + 1) > data_end)
		return PKT_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return PKT_MALFORMED;
	hlen = ip->ihl * 4;
	tot = bpf_ntohs(ip->tot_len);
	if (tot < hlen || ETH_HLEN + tot > len)
		return PKT_MALFORMED;

	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->proto = ip->protocol;
	p->id = ip->id;
	p->sport = 0;
	p->dport = 0;
	p->tcp_flags = 0;
	p->icmp_type = 0;
	p->l4_off = ETH_HLEN + hlen;
	p->csum_off = 0;
	frag = bpf_ntohs(ip->frag_off);
	if (frag & IP_OFFSET)
		return PKT_FRAGMENT;
	p->first_frag = (frag & IP_MF) != 0;

	l4len = tot - hlen;
	l4 = (void *)ip + hlen;
	switch (ip->protocol) {
	case IPPROTO_TCP:
		if (l4len < 20 || (void *)(l4 + 20) > data_end)
			return PKT_SHORT_L4;
		p->sport = *(__be16 *)l4;
		p->dport = *(__be16 *)(l4 + 2);
		p->tcp_flags = l4[13];
		p->csum_off = p->l4_off + 16;
		return PKT_TUPLE;
	case IPPROTO_UDP:
		if (l4len < 8 || (void *)(l4 + 8) > data_end)
			return PKT_SHORT_L4;
		p->sport = *(__be16 *)l4;
		p->dport = *(__be16 *)(l4 + 2);
		p->csum_off = p->l4_off + 6;
		return PKT_TUPLE;
	case IPPROTO_ICMP:
		if (l4len < 8 || (void *)(l4 + 8) > data_end)
			return PKT_SHORT_L4;
		p->icmp_type = l4[0];
		p->csum_off = p->l4_off + 2;
		if (parse_echo(l4, &p->sport, &p->dport))
			return PKT_TUPLE;
		/* An error quoting a fragment's later part, or coming itself
		 * in fragments, cannot be mapped back. */
		if (icmp_is_error(l4[0]) && !p->first_frag)
			return parse_icmp_error(data, data_end, p);
		return PKT_NO_TUPLE;
	}
	return PKT_NO_TUPLE;
}

/* ---- Conntrack ---- */

static __always_inline __u64 ct_timeout(__u8 proto, __u8 flags)
{
	if (proto == IPPROTO_TCP) {
		if ((flags & CT_F_RST) || (flags & (CT_F_FIN_ORIG | CT_F_FIN_REPLY)) == (CT_F_FIN_ORIG | CT_F_FIN_REPLY))
			return CT_TIMEOUT_TCP_CLOSE;
		if (flags & (CT_F_FIN_ORIG | CT_F_FIN_REPLY))
			return CT_TIMEOUT_TCP_FIN;
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
			flags = 0;
		if (tcp_flags & TCP_RST)
			flags |= CT_F_RST;
		if (tcp_flags & TCP_FIN)
			flags |= reply ? CT_F_FIN_REPLY : CT_F_FIN_ORIG;
	}
	if (reply)
		flags |= CT_F_REPLIED;
	return flags;
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
	long err;

	err = bpf_map_update_elem(&ct, rk, rv, BPF_NOEXIST);
	if (err == -EEXIST) {
		old = bpf_map_lookup_elem(&ct, rk);
		if (old && !ct_expired(old, rk->proto, now) && !ct_same(old, rv))
			return -1;
		err = bpf_map_update_elem(&ct, rk, rv, BPF_ANY);
	}
	if (err)
		return -1;
	if (bpf_map_update_elem(&ct, ok, ov, BPF_ANY)) {
		bpf_map_delete_elem(&ct, rk);
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

/* ---- Rewriting ---- */

/* What the L4 checksum still needs after nat_rewrite: `pseudo` for the
 * address change it covers through the pseudo header (TCP, UDP), `l4` for
 * changes inside the L4 bytes. They are applied apart because a
 * CHECKSUM_PARTIAL field must take the first and not the second. */
struct csum_delta {
	__u32 pseudo;
	__u32 l4;
};

/* The new tuple a packet leaves with. */
struct tuple {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
};

static __always_inline void tuple_of(struct tuple *t, const struct ct_entry *e)
{
	t->saddr = e->saddr;
	t->daddr = e->daddr;
	t->sport = e->sport;
	t->dport = e->dport;
}

/* set_addrs rewrites an IPv4 header's addresses and fixes its checksum;
 * it returns the diff of the address change alone (what a pseudo header
 * sees). */
static __always_inline __u32 set_addrs(struct iphdr *ip, __be32 saddr, __be32 daddr)
{
	__u32 diff = 0;

	if (ip->saddr != saddr) {
		diff = csum_diff32(diff, ip->saddr, saddr);
		ip->saddr = saddr;
	}
	if (ip->daddr != daddr) {
		diff = csum_diff32(diff, ip->daddr, daddr);
		ip->daddr = daddr;
	}
	if (diff)
		ip->check = csum_apply(ip->check, diff);
	return diff;
}

/* set16 stores v at p, adding the change to *diff. */
static __always_inline void set16(__be16 *p, __be16 v, __u32 *diff)
{
	if (*p != v) {
		*diff = csum_diff16(*diff, *p, v);
		*p = v;
	}
}

/* nat_rewrite gives a PKT_TUPLE packet the tuple t (ports too) or a
 * PKT_FRAGMENT one its addresses (ports == 0). */
static __always_inline int nat_rewrite(void *data, void *data_end, const struct pkt *p, const struct tuple *t, int ports,
				       struct csum_delta *d)
{
	struct iphdr *ip = data + ETH_HLEN;
	__u32 off = p->l4_off, addr;
	__be16 *l4;

	d->pseudo = 0;
	d->l4 = 0;
	if ((void *)(ip + 1) > data_end)
		return -1;
	addr = set_addrs(ip, t->saddr, t->daddr);
	if (!ports)
		return 0;
	if (off > ETH_HLEN + IPV4_MAX_HLEN)
		return -1;
	l4 = data + off;
	if ((void *)(l4 + 4) > data_end)
		return -1;
	if (p->proto == IPPROTO_ICMP) {
		set16(&l4[2], p->icmp_type == ICMP_ECHO ? t->sport : t->dport, &d->l4);
		return 0;
	}
	d->pseudo = addr;
	set16(&l4[0], t->sport, &d->l4);
	set16(&l4[1], t->dport, &d->l4);
	return 0;
}

/* nat_rewrite_icmp_error translates an ICMP error about a connection: the
 * quoted packet gets the tuple inner (addresses, ports, its own IPv4 and
 * L4 checksums), the outer header the addresses outer_saddr/outer_daddr.
 * Every change inside the ICMP message is summed into d->l4 for the ICMP
 * checksum; ICMP has no pseudo header. */
static __always_inline int nat_rewrite_icmp_error(void *data, void *data_end, const struct pkt *p,
						  const struct tuple *inner, __be32 outer_saddr,
						  __be32 outer_daddr, struct csum_delta *d)
{
	struct iphdr *ip = data + ETH_HLEN, *in;
	__u32 off = p->inner_off, l4off = p->inner_l4_off, csoff = p->inner_csum_off;
	__u32 addr, l4diff = 0;
	__u16 *check, old;
	__be16 *l4;

	d->pseudo = 0;
	d->l4 = 0;
	if ((void *)(ip + 1) > data_end)
		return -1;
	set_addrs(ip, outer_saddr, outer_daddr);

	if (off > ETH_HLEN + IPV4_MAX_HLEN + 8 || l4off > ETH_HLEN + IPV4_MAX_HLEN + 8 + IPV4_MAX_HLEN)
		return -1;
	in = data + off;
	if ((void *)(in + 1) > data_end)
		return -1;
	old = in->check;
	addr = set_addrs(in, inner->saddr, inner->daddr);
	d->l4 = csum_add(d->l4, addr);
	d->l4 = csum_diff16(d->l4, old, in->check);

	l4 = data + l4off;
	if ((void *)(l4 + 4) > data_end)
		return -1;
	if (p->inner_proto == IPPROTO_ICMP) {
		set16(&l4[2], p->inner_icmp_type == ICMP_ECHO ? inner->sport : inner->dport, &l4diff);
	} else {
		set16(&l4[0], inner->sport, &l4diff);
		set16(&l4[1], inner->dport, &l4diff);
	}
	d->l4 = csum_add(d->l4, l4diff);

	/* The quoted L4 checksum, if the quote reaches it: it was computed
	 * over the quoted addresses (pseudo header, TCP and UDP) and ports. */
	if (!csoff)
		return 0;
	if (csoff > ETH_HLEN + IPV4_MAX_HLEN + 8 + IPV4_MAX_HLEN + 16)
		return -1;
	check = data + csoff;
	if ((void *)(check + 1) > data_end)
		return -1;
	old = *check;
	if (p->inner_proto == IPPROTO_UDP && old == 0)
		return 0;
	if (p->inner_proto != IPPROTO_ICMP)
		l4diff = csum_add(l4diff, addr);
	*check = csum_apply(old, l4diff);
	if (p->inner_proto == IPPROTO_UDP && *check == 0)
		*check = 0xffff;
	d->l4 = csum_diff16(d->l4, old, *check);
	return 0;
}

/* l4_csum_direct applies d to the L4 checksum in place: for XDP, where
 * every checksum is a full one. A UDP checksum of 0 means "none" and stays
 * 0; a computed 0 is sent as 0xffff (RFC 768). */
static __always_inline int l4_csum_direct(void *data, void *data_end, const struct pkt *p, const struct csum_delta *d)
{
	__u32 off = p->csum_off;
	__u16 *check, sum;

	if (!d->pseudo && !d->l4)
		return 0;
	if (off > ETH_HLEN + IPV4_MAX_HLEN + 16)
		return -1;
	check = data + off;
	if ((void *)(check + 1) > data_end)
		return -1;
	if (p->proto == IPPROTO_UDP && *check == 0)
		return 0;
	sum = csum_apply(*check, csum_add(d->pseudo, d->l4));
	if (p->proto == IPPROTO_UDP && sum == 0)
		sum = 0xffff;
	*check = sum;
	return 0;
}

/* ---- tc only ---- */

/* skb_data and skb_data_end load the packet pointers. The empty asm hides
 * where the value came from: without it, clang may keep skb->data as a
 * 32-bit integer across inlined code and widen it later with shifts, which
 * the verifier refuses on a pointer. */
static __always_inline void *skb_data(const struct __sk_buff *skb)
{
	void *p = (void *)(long)skb->data;

	asm volatile("" : "+r"(p));
	return p;
}

static __always_inline void *skb_data_end(const struct __sk_buff *skb)
{
	void *p = (void *)(long)skb->data_end;

	asm volatile("" : "+r"(p));
	return p;
}

/* linear makes the first n bytes directly readable. A veth can hand us a
 * non-linear skb whose headers are partly in fragments; pulling fixes that.
 * Returns 0 if the packet is shorter than n. Packet pointers are invalid
 * after a call: the caller reloads and re-checks them. */
static __always_inline int linear(struct __sk_buff *skb, __u32 n)
{
	if (skb_data(skb) + n <= skb_data_end(skb))
		return 1;
	if (n > skb->len)
		return 0;
	return bpf_skb_pull_data(skb, n) == 0;
}

/* tc_pull_headers makes the IPv4 header and what parse_ipv4 reads of the
 * L4 header directly readable, as far as the packet has them; the parser
 * finds out what is missing. Returns 0 if not even an IPv4 header fits. */
static __always_inline int tc_pull_headers(struct __sk_buff *skb)
{
	void *data, *data_end;
	struct iphdr *ip;
	__u32 need;

	if (!linear(skb, ETH_HLEN + sizeof(struct iphdr)))
		return 0;
	data = skb_data(skb);
	data_end = skb_data_end(skb);
	ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > data_end)
		return 0;
	need = ETH_HLEN + ip->ihl * 4;
	if (!(ip->frag_off & bpf_htons(IP_OFFSET)))
		need += l4_need(ip->protocol);
	if (ip->protocol == IPPROTO_ICMP)
		need += ICMP_ERROR_NEED;
	if (need > skb->len)
		need = skb->len;
	linear(skb, need);
	return 1;
}

/* l4_csum_tc applies d to the L4 checksum through the kernel, which knows
 * whether the field is a full checksum, a CHECKSUM_PARTIAL seed (takes
 * only the pseudo header part) or backed by a CHECKSUM_COMPLETE skb->csum
 * (updated too). Invalidates packet pointers. */
static __always_inline int l4_csum_tc(struct __sk_buff *skb, const struct pkt *p, const struct csum_delta *d)
{
	__u64 mm = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (d->pseudo && bpf_l4_csum_replace(skb, p->csum_off, 0, d->pseudo, BPF_F_PSEUDO_HDR | mm))
		return -1;
	if (d->l4 && bpf_l4_csum_replace(skb, p->csum_off, 0, d->l4, mm))
		return -1;
	return 0;
}

/* set_macs addresses the frame to dst from src (a router MAC), as a
 * redirect into an endpoint needs. */
static __always_inline int set_macs(struct __sk_buff *skb, const __u8 *dst, const __u8 *src)
{
	void *data = skb_data(skb);
	void *data_end = skb_data_end(skb);
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return -1;
	mac_copy(eth->h_dest, dst);
	mac_copy(eth->h_source, src);
	return 0;
}

/* tc_translate rewrites the packet at tc: to the tuple t (PKT_TUPLE), its
 * addresses only (PKT_FRAGMENT), or the quoted packet to t and the outer
 * addresses to outer_saddr/outer_daddr (PKT_ICMP_ERROR). Returns 0 or -1
 * (then the packet may be half changed: drop it). */
static __always_inline int tc_translate(struct __sk_buff *skb, const struct pkt *p, int status, const struct tuple *t,
					__be32 outer_saddr, __be32 outer_daddr)
{
	void *data = skb_data(skb);
	void *data_end = skb_data_end(skb);
	struct csum_delta d;
	int err;

	if (status == PKT_ICMP_ERROR)
		err = nat_rewrite_icmp_error(data, data_end, p, t, outer_saddr, outer_daddr, &d);
	else
		err = nat_rewrite(data, data_end, p, t, status == PKT_TUPLE, &d);
	if (err)
		return -1;
	return l4_csum_tc(skb, p, &d);
}

/* host_socket_uses: does a socket of the host own the reply tuple
 * raddr:rport -> laddr:lport? Then masquerade must not pick lport, or the
 * NAT would take the host's own packets (a listener included: a connection
 * from raddr:rport to it would look like a reply). */
static __always_inline int host_socket_uses(struct __sk_buff *skb, __u8 proto, __be32 raddr, __be16 rport,
					    __be32 laddr, __be16 lport)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;

	t.ipv4.saddr = raddr;
	t.ipv4.sport = rport;
	t.ipv4.daddr = laddr;
	t.ipv4.dport = lport;
	if (proto == IPPROTO_TCP)
		sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	else if (proto == IPPROTO_UDP)
		sk = bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	else
		return 0;
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

#endif /* FABRIC_NAT_H */
