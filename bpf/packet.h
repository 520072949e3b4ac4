/* packet.h: what fabric's programs need to read an IPv4 packet for NAT,
 * at tc and at XDP alike: Internet checksum arithmetic, a parser that
 * works on (data, data_end) packet pointers, and for tc the helpers that
 * make headers directly readable first.
 */
#ifndef FABRIC_PACKET_H
#define FABRIC_PACKET_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

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

/* ---- Packet access at tc ---- */

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

/* skb_head returns the start of the packet if its first n bytes are
 * directly readable (see linear), else NULL: the bounds check the verifier
 * needs before the caller reads them, and again after every call that may
 * move the packet. */
static __always_inline void *skb_head(const struct __sk_buff *skb, __u32 n)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (data + n > data_end)
		return NULL;
	return data;
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

#endif /* FABRIC_PACKET_H */
