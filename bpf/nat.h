/* nat.h: fabric's NAT core, shared by the endpoint program (hairpin) and
 * the uplink programs (masquerade, published ports), at tc and at XDP.
 *
 * Everything works on (data, data_end) packet pointers, so that one parser
 * (packet.h), one conntrack (conntrack.h) and one rewriter (here) serve
 * both hooks. The rewriter changes addresses, ports and the IPv4 header
 * checksum in place and returns what the L4 checksum still needs (RFC 1624
 * differences); the caller applies that: XDP directly, tc through
 * bpf_l4_csum_replace. At tc a TCP or UDP checksum may be CHECKSUM_PARTIAL
 * (the field then holds only the pseudo header's sum and the device
 * completes it) or backed by a CHECKSUM_COMPLETE skb->csum, which only the
 * helper knows about and keeps right. XDP cannot tell: it assumes a frame
 * from a wire, whose checksum is always whole. A veth peer hands XDP
 * CHECKSUM_PARTIAL frames, one more reason never to run it on a veth.
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
#include "packet.h"
#include "conntrack.h"

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

/* pkt_off_fence makes the verifier see that a packet offset already
 * checked against a constant below 256 is below 256 where it is used.
 * Without it clang may add a copy of the offset spilled before the check,
 * whose bounds the 6.1 verifier does not narrow: the pointer then has an
 * offset of up to 65535, and no comparison with data_end gives it a range
 * ("R8 offset is outside of the packet"). The mask changes no value. */
#define pkt_off_fence(off) asm volatile("%0 &= 0xff" : "+r"(off))

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
	pkt_off_fence(off);
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
	pkt_off_fence(off);
	pkt_off_fence(l4off);
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
	pkt_off_fence(csoff);
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
