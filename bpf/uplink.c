//go:build ignore

/* uplink.c: the programs on the uplink, the host's interface to the
 * outside world.
 *
 *   to_uplink (tc egress) masquerades endpoints' connections to the
 *   outside behind host_config.snat_addr and translates the replies of
 *   published-port connections back to the published address;
 *
 *   from_uplink (tc ingress) translates replies of masqueraded connections
 *   and new and known connections to published ports, and hands them
 *   straight to the endpoint's veth;
 *
 *   xdp_uplink (XDP) does the same translations in place, earlier and
 *   cheaper, and leaves delivery to the stack and from_uplink; it also
 *   drops what is addressed to an unused fabric address before the stack
 *   spends anything on it.
 *
 * Everything that is not a fabric flow (the host's own traffic above all)
 * passes untouched. Every path ends in exactly one counted verdict.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "fabric.h"
#include "nat.h"

char __license[] SEC("license") = "GPL";

/* Source ports tried for one new masqueraded connection: enough to find a
 * free one in a range that is nearly full, few enough to bound the work a
 * packet can cause. */
#define NAT_ATTEMPTS 32

/* ---- Ingress: shared by from_uplink and xdp_uplink ---- */

enum ingress_action {
	ING_PASS,      /* leave it to the stack */
	ING_DROP,
	ING_TRANSLATE, /* rewrite to `t` (and `outer_*` for ICMP errors), deliver to dst */
	ING_DELIVER,   /* already translated (by XDP): deliver to dst as it is */
};

struct ingress {
	enum ingress_action action;
	enum reason reason;
	int status;              /* parse_ipv4's */
	struct endpoint *dst;    /* ING_TRANSLATE, ING_DELIVER */
	struct tuple t;
	__be32 outer_saddr;      /* PKT_ICMP_ERROR */
	__be32 outer_daddr;
	struct pkt p;
};

static __always_inline void ingress_verdict(struct ingress *r, enum ingress_action action, enum reason reason)
{
	r->action = action;
	r->reason = reason;
}

/* ingress_reason: a translated packet from outside is either a reply to a
 * masqueraded connection or part of a published-port connection. */
static __always_inline enum reason ingress_reason(__u8 kind)
{
	return kind == CT_KIND_SNAT ? REASON_SNAT_REPLY : REASON_DNAT;
}

/* ingress_other decides on a packet that no translation claimed: the
 * host's own traffic passes; a fabric address no endpoint holds, or one of
 * an --internal network, is not reachable from outside. */
static __always_inline void ingress_other(struct ingress *r, __be32 daddr)
{
	struct subnet_key sk = { .prefixlen = 32, .addr = daddr };
	struct endpoint *ep;
	struct network *net;
	__u32 *id;

	ep = bpf_map_lookup_elem(&endpoint_by_ip, &daddr);
	if (ep) {
		net = bpf_map_lookup_elem(&networks, &ep->network_id);
		if (net && (net->flags & NETWORK_F_INTERNAL))
			return ingress_verdict(r, ING_DROP, REASON_INTERNAL);
		return ingress_verdict(r, ING_PASS, REASON_NOT_NAT);
	}
	if (bpf_map_lookup_elem(&host_addrs, &daddr))
		return ingress_verdict(r, ING_PASS, REASON_NOT_NAT);
	id = bpf_map_lookup_elem(&subnets, &sk);
	if (!id)
		return ingress_verdict(r, ING_PASS, REASON_NOT_NAT);
	net = bpf_map_lookup_elem(&networks, id);
	if (!net || net->gateway == daddr)
		return ingress_verdict(r, ING_PASS, REASON_NOT_NAT);
	return ingress_verdict(r, ING_DROP, REASON_NO_OWNER);
}

/* ingress_icmp_error maps an ICMP error about a translated connection
 * back: the quoted packet left through the uplink translated, so the
 * reverse of its tuple is a CT_DIR_IN key whose entry says where the
 * connection really leads. */
static __always_inline int ingress_icmp_error(struct ingress *r, __u64 now)
{
	struct pkt *p = &r->p;
	struct ct_key k = {
		.saddr = p->inner_daddr, .daddr = p->inner_saddr,
		.sport = p->inner_dport, .dport = p->inner_sport,
		.proto = p->inner_proto, .dir = CT_DIR_IN,
	};
	struct ct_entry *e = ct_lookup(&k, now);

	if (!e)
		return 0;
	r->dst = bpf_map_lookup_elem(&endpoint_by_ip, &e->daddr);
	if (!r->dst) {
		ingress_verdict(r, ING_DROP, REASON_NO_OWNER);
		return 1;
	}
	/* The quoted packet as the endpoint sent it: the reverse of e. */
	r->t.saddr = e->daddr;
	r->t.daddr = e->saddr;
	r->t.sport = e->dport;
	r->t.dport = e->sport;
	r->outer_saddr = p->saddr;
	r->outer_daddr = p->daddr == p->inner_saddr ? e->daddr : p->daddr;
	ingress_verdict(r, ING_TRANSLATE, ingress_reason(e->kind));
	return 1;
}

/* ingress_published makes a new connection to a published port. Returns 0
 * if daddr:dport is not one. */
static __always_inline int ingress_published(struct ingress *r, const struct ct_key *ok, __u64 now)
{
	struct pkt *p = &r->p;
	struct port_target *pt;
	struct endpoint *dst;
	struct network *net;
	struct ct_entry ov = {};
	enum reason why;

	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return 0;
	pt = lookup_port(p->proto, p->daddr, p->dport);
	if (!pt)
		return 0;
	dst = bpf_map_lookup_elem(&endpoint_by_ip, &pt->addr);
	if (!dst) {
		/* Published for an endpoint that is not (or no longer) here:
		 * the stack answers, as for any closed port. */
		ingress_verdict(r, ING_PASS, REASON_NOT_NAT);
		return 1;
	}
	net = bpf_map_lookup_elem(&networks, &dst->network_id);
	if (!net) {
		ingress_verdict(r, ING_DROP, REASON_NO_NETWORK);
		return 1;
	}
	if (net->flags & NETWORK_F_INTERNAL) {
		ingress_verdict(r, ING_DROP, REASON_INTERNAL);
		return 1;
	}

	if (ct_open_port(p, ok, pt, p->saddr, CT_KIND_DNAT, CT_DIR_IN, now, &ov, &why)) {
		ingress_verdict(r, ING_DROP, why);
		return 1;
	}
	r->dst = dst;
	tuple_of(&r->t, &ov);
	if (p->first_frag)
		frag_record(p, CT_DIR_IN, ov.saddr, ov.daddr, CT_KIND_DNAT, 0, now);
	ingress_verdict(r, ING_TRANSLATE, REASON_DNAT);
	return 1;
}

/* ingress_translated: at tc, after xdp_uplink translated the packet, its
 * destination is an endpoint and the reverse of its tuple is the endpoint's
 * own (CT_DIR_OUT) entry of a masqueraded or published-port connection. */
static __always_inline int ingress_translated(struct ingress *r, __u64 now)
{
	struct pkt *p = &r->p;
	struct ct_key k = {
		.saddr = p->daddr, .daddr = p->saddr, .sport = p->dport, .dport = p->sport,
		.proto = p->proto, .dir = CT_DIR_OUT,
	};
	struct ct_entry *e;

	r->dst = bpf_map_lookup_elem(&endpoint_by_ip, &p->daddr);
	if (!r->dst)
		return 0;
	e = ct_lookup(&k, now);
	if (!e)
		return 0;
	if (e->kind == CT_KIND_SNAT && !e->reply) {
		ingress_verdict(r, ING_DELIVER, REASON_SNAT_REPLY);
		return 1;
	}
	if (e->kind == CT_KIND_DNAT && e->reply) {
		ingress_verdict(r, ING_DELIVER, REASON_DNAT);
		return 1;
	}
	return 0;
}

/* uplink_ingress decides what to do with a frame from outside and how to
 * translate it; the caller rewrites and delivers. tc says whether the
 * caller is from_uplink (which may see what xdp_uplink already did). */
static __always_inline void uplink_ingress(void *data, void *data_end, __u32 len, int tc, struct ingress *r)
{
	struct pkt *p = &r->p;
	struct ct_key k = {};
	struct ct_entry *e;
	struct frag_entry *f;
	__u64 now;

	r->status = parse_ipv4(data, data_end, len, p);
	if (r->status == PKT_MALFORMED)
		return ingress_verdict(r, ING_PASS, REASON_MALFORMED);
	now = bpf_ktime_get_ns();

	switch (r->status) {
	case PKT_FRAGMENT:
		f = frag_lookup(p, CT_DIR_IN, now);
		if (!f)
			break;
		r->dst = bpf_map_lookup_elem(&endpoint_by_ip, &f->daddr);
		if (!r->dst)
			return ingress_verdict(r, ING_DROP, REASON_NO_OWNER);
		r->t.saddr = f->saddr;
		r->t.daddr = f->daddr;
		return ingress_verdict(r, ING_TRANSLATE, ingress_reason(f->kind));
	case PKT_ICMP_ERROR:
		if (ingress_icmp_error(r, now))
			return;
		break;
	case PKT_TUPLE:
		ct_key_of(&k, p, CT_DIR_IN);
		e = ct_lookup(&k, now);
		if (e) {
			r->dst = bpf_map_lookup_elem(&endpoint_by_ip, &e->daddr);
			if (!r->dst)
				return ingress_verdict(r, ING_DROP, REASON_NO_OWNER);
			ct_refresh(&k, e, p, now);
			tuple_of(&r->t, e);
			if (p->first_frag)
				frag_record(p, CT_DIR_IN, e->saddr, e->daddr, e->kind, e->reply, now);
			return ingress_verdict(r, ING_TRANSLATE, ingress_reason(e->kind));
		}
		if (ingress_published(r, &k, now))
			return;
		if (tc && ingress_translated(r, now))
			return;
		break;
	}
	ingress_other(r, p->daddr);
}

/* ---- from_uplink ---- */

static __always_inline int from_uplink_deliver(struct __sk_buff *skb, const struct endpoint *dst, enum reason reason)
{
	struct network *net = bpf_map_lookup_elem(&networks, &dst->network_id);

	if (!net)
		return tc_done(skb, DIR_FROM_UPLINK, TC_ACT_SHOT, REASON_NO_NETWORK);
	if (set_macs(skb, dst->mac, net->router_mac))
		return tc_done(skb, DIR_FROM_UPLINK, TC_ACT_SHOT, REASON_MALFORMED);
	return tc_done(skb, DIR_FROM_UPLINK, bpf_redirect(dst->ifindex, 0), reason);
}

SEC("tc")
int from_uplink(struct __sk_buff *skb)
{
	struct ingress r = {};
	void *data, *data_end;
	struct ethhdr *eth;

	/* A tag carried out of band belongs to a VLAN device on the uplink,
	 * not to the uplink's own addresses. */
	if (skb->vlan_present)
		return tc_done(skb, DIR_FROM_UPLINK, TC_ACT_OK, REASON_NOT_NAT);
	if (!linear(skb, sizeof(*eth)))
		return tc_done(skb, DIR_FROM_UPLINK, TC_ACT_OK, REASON_MALFORMED);
	data = skb_data(skb);
	data_end = skb_data_end(skb);
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return tc_done(skb, DIR_FROM_UPLINK, TC_ACT_OK, REASON_MALFORMED);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return tc_done(skb, DIR_FROM_UPLINK, TC_ACT_OK, REASON_NOT_NAT);
	if (!tc_pull_headers(skb))
		return tc_done(skb, DIR_FROM_UPLINK, TC_ACT_OK, REASON_MALFORMED);

	data = skb_data(skb);
	data_end = skb_data_end(skb);
	uplink_ingress(data, data_end, skb->len, 1, &r);
	switch (r.action) {
	case ING_PASS:
		break;
	case ING_DROP:
		return tc_done(skb, DIR_FROM_UPLINK, TC_ACT_SHOT, r.reason);
	case ING_TRANSLATE:
		if (!r.dst)
			return tc_done(skb, DIR_FROM_UPLINK, TC_ACT_SHOT, REASON_NO_OWNER);
		if (tc_translate(skb, &r.p, r.status, &r.t, r.outer_saddr, r.outer_daddr))
			return tc_done(skb, DIR_FROM_UPLINK, TC_ACT_SHOT, REASON_MALFORMED);
		return from_uplink_deliver(skb, r.dst, r.reason);
	case ING_DELIVER:
		if (!r.dst)
			return tc_done(skb, DIR_FROM_UPLINK, TC_ACT_SHOT, REASON_NO_OWNER);
		return from_uplink_deliver(skb, r.dst, r.reason);
	}
	return tc_done(skb, DIR_FROM_UPLINK, TC_ACT_OK, r.reason);
}

/* ---- xdp_uplink ---- */

static __always_inline int xdp_done(struct xdp_md *ctx, int ret, enum reason reason)
{
	__u32 len = ctx->data_end - ctx->data;

	count_len(len, DIR_XDP_UPLINK, ret == XDP_DROP ? VERDICT_DROP : VERDICT_PASS, reason);
	return ret;
}

SEC("xdp")
int xdp_uplink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ingress r = {};
	struct csum_delta d;
	int err;

	if ((void *)(eth + 1) > data_end)
		return xdp_done(ctx, XDP_PASS, REASON_MALFORMED);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return xdp_done(ctx, XDP_PASS, REASON_NOT_NAT);

	uplink_ingress(data, data_end, data_end - data, 0, &r);
	switch (r.action) {
	case ING_DROP:
		return xdp_done(ctx, XDP_DROP, r.reason);
	case ING_TRANSLATE:
		if (r.status == PKT_ICMP_ERROR)
			err = nat_rewrite_icmp_error(data, data_end, &r.p, &r.t, r.outer_saddr, r.outer_daddr, &d);
		else
			err = nat_rewrite(data, data_end, &r.p, &r.t, r.status == PKT_TUPLE, &d);
		if (!err)
			err = l4_csum_direct(data, data_end, &r.p, &d);
		if (err)
			return xdp_done(ctx, XDP_DROP, REASON_MALFORMED);
		/* Delivery is the stack's (and from_uplink's): redirecting into
		 * a veth from XDP would need XDP on the veth, which costs its
		 * peer TSO (see DESIGN.md). */
		return xdp_done(ctx, XDP_PASS, r.reason);
	default:
		return xdp_done(ctx, XDP_PASS, r.reason);
	}
}

/* ---- to_uplink ---- */

/* snat_claim enters the reply tuple rk (its port chosen) for rv if the
 * tuple is free: no live entry and no host socket has it. It returns 1 if
 * rk is rv's now, 0 if taken, -1 if conntrack refused. A function of its
 * own, not inlined: with this body inside snat_create's loop, clang lays
 * the loop out with its latch falling through into its head, a back-edge
 * the 6.1 verifier rejects ("back-edge from insn"). */
static __noinline int snat_claim(struct __sk_buff *skb, const struct ct_key *rk, const struct ct_entry *rv, __u64 now)
{
	struct ct_entry *cur;
	map_err err;

	if (host_socket_uses(skb, rk->proto, rk->saddr, rk->sport, rk->daddr, rk->dport))
		return 0;
	err = bpf_map_update_elem(&ct, rk, rv, BPF_NOEXIST);
	if (!err)
		ct_stat(CT_STAT_INSERTS);
	if (err == -EEXIST) {
		/* Taken, unless expired or this very connection's (its
		 * original entry was evicted, not its reply entry). */
		cur = bpf_map_lookup_elem(&ct, rk);
		if (cur && !ct_expired(cur, rk->proto, now) && !ct_same(cur, rv))
			return 0;
		err = bpf_map_update_elem(&ct, rk, rv, BPF_ANY);
	}
	return err ? -1 : 1;
}

/* snat_create masquerades a new connection: it claims a reply tuple
 * (X:q -> snat:port) for a port from the configured range, then stores the
 * connection. The first choice is the endpoint's own port (if in range),
 * which keeps port-preserving protocols working, then ports from a random
 * start in sequence, so a small range is covered completely. A tuple is
 * free if no live entry and no host socket has it. */
static __always_inline int snat_create(struct __sk_buff *skb, const struct pkt *p, const struct ct_key *ok,
				       const struct host_config *hc, __u64 now, struct ct_entry *out,
				       enum reason *why)
{
	__u32 min = hc->nat_port_min, max = hc->nat_port_max;
	__u32 range = max - min + 1, start = bpf_get_prandom_u32() % range;
	__u16 pref = bpf_ntohs(p->sport);
	struct ct_key rk = { .saddr = p->daddr, .daddr = hc->snat_addr, .sport = p->dport, .proto = p->proto, .dir = CT_DIR_IN };
	struct ct_entry rv = {
		.last_seen = now, .saddr = p->daddr, .daddr = p->saddr, .sport = p->dport, .dport = p->sport,
		.kind = CT_KIND_SNAT, .flags = ct_initial_flags(p), .reply = 1, .rev_dir = CT_DIR_OUT,
	};
	struct ct_entry ov = {}, *cur;
	__be16 port = 0;
	map_err err;
	__u32 i;

	for (i = 0; i < NAT_ATTEMPTS; i++) {
		__u16 cand = min + (start + i) % range;
		int got;

		if (i == 0 && pref >= min && pref <= max)
			cand = pref;
		rk.dport = bpf_htons(cand);
		got = snat_claim(skb, &rk, &rv, now);
		if (got < 0) {
			*why = REASON_CT_FULL;
			return -1;
		}
		if (got) {
			port = rk.dport;
			break;
		}
	}
	if (!port) {
		*why = REASON_NAT_EXHAUSTED;
		return -1;
	}

	ov.last_seen = now;
	ov.saddr = hc->snat_addr;
	ov.daddr = p->daddr;
	ov.sport = port;
	ov.dport = p->dport;
	ov.kind = CT_KIND_SNAT;
	ov.flags = rv.flags;
	ov.rev_dir = CT_DIR_IN;
	err = bpf_map_update_elem(&ct, ok, &ov, BPF_NOEXIST);
	if (!err)
		ct_stat(CT_STAT_INSERTS);
	if (err == -EEXIST) {
		cur = bpf_map_lookup_elem(&ct, ok);
		if (cur && !ct_expired(cur, p->proto, now)) {
			/* Another CPU masqueraded the same connection's first
			 * packets meanwhile: use its port, free ours. */
			if (!bpf_map_delete_elem(&ct, &rk))
				ct_stat(CT_STAT_DELETES);
			*out = *cur;
			return 0;
		}
		err = bpf_map_update_elem(&ct, ok, &ov, BPF_ANY);
	}
	if (err) {
		if (!bpf_map_delete_elem(&ct, &rk))
			ct_stat(CT_STAT_DELETES);
		*why = REASON_CT_FULL;
		return -1;
	}
	*out = ov;
	return 0;
}

static __always_inline enum reason egress_reason(__u8 kind)
{
	return kind == CT_KIND_SNAT ? REASON_SNAT : REASON_DNAT_REPLY;
}

/* egress_icmp_error: an endpoint answers a translated packet with an ICMP
 * error (port unreachable, say). The quoted packet is the translated one
 * it received, so the reverse of its tuple is the endpoint's CT_DIR_OUT
 * entry, which holds what the outside must see. */
static __always_inline int egress_icmp_error(struct __sk_buff *skb, const struct pkt *p, __u64 now)
{
	struct ct_key k = {
		.saddr = p->inner_daddr, .daddr = p->inner_saddr,
		.sport = p->inner_dport, .dport = p->inner_sport,
		.proto = p->inner_proto, .dir = CT_DIR_OUT,
	};
	struct ct_entry *e = ct_lookup(&k, now);
	struct tuple t;
	__be32 saddr;

	if (!e || !((e->kind == CT_KIND_SNAT && !e->reply) || (e->kind == CT_KIND_DNAT && e->reply)))
		return -1;
	t.saddr = e->daddr;
	t.daddr = e->saddr;
	t.sport = e->dport;
	t.dport = e->sport;
	saddr = p->saddr == p->inner_daddr ? e->saddr : p->saddr;
	if (tc_translate(skb, p, PKT_ICMP_ERROR, &t, saddr, p->daddr))
		return tc_done(skb, DIR_TO_UPLINK, TC_ACT_SHOT, REASON_MALFORMED);
	return tc_done(skb, DIR_TO_UPLINK, TC_ACT_OK, egress_reason(e->kind));
}

SEC("tc")
int to_uplink(struct __sk_buff *skb)
{
	struct host_config *hc;
	struct endpoint *src;
	struct network *net;
	struct ct_entry *e, created;
	struct frag_entry *f;
	struct ct_key k = {};
	struct pkt p = {};
	struct tuple t;
	void *data, *data_end;
	struct ethhdr *eth;
	struct iphdr *ip;
	enum reason why = REASON_NOT_NAT;
	__u32 zero = 0;
	__be32 saddr;
	__u64 now;
	int st, ret;

	if (skb->vlan_present)
		return tc_done(skb, DIR_TO_UPLINK, TC_ACT_OK, REASON_NOT_NAT);
	if (!linear(skb, sizeof(*eth)))
		return tc_done(skb, DIR_TO_UPLINK, TC_ACT_OK, REASON_MALFORMED);
	data = skb_data(skb);
	data_end = skb_data_end(skb);
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return tc_done(skb, DIR_TO_UPLINK, TC_ACT_OK, REASON_MALFORMED);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return tc_done(skb, DIR_TO_UPLINK, TC_ACT_OK, REASON_NOT_NAT);
	if (!tc_pull_headers(skb))
		return tc_done(skb, DIR_TO_UPLINK, TC_ACT_OK, REASON_MALFORMED);
	data = skb_data(skb);
	data_end = skb_data_end(skb);
	ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > data_end)
		return tc_done(skb, DIR_TO_UPLINK, TC_ACT_OK, REASON_MALFORMED);

	/* The host's own traffic costs one lookup: only a packet from an
	 * endpoint can need translating here. */
	saddr = ip->saddr;
	src = bpf_map_lookup_elem(&endpoint_by_ip, &saddr);
	if (!src)
		return tc_done(skb, DIR_TO_UPLINK, TC_ACT_OK, REASON_NOT_NAT);

	/* From here on nothing leaves with the endpoint's address unless it
	 * is meant to (routed mode, see below). */
	st = parse_ipv4(data, data_end, skb->len, &p);
	if (st == PKT_MALFORMED)
		return tc_done(skb, DIR_TO_UPLINK, TC_ACT_SHOT, REASON_MALFORMED);
	now = bpf_ktime_get_ns();

	if (st == PKT_TUPLE) {
		ct_key_of(&k, &p, CT_DIR_OUT);
		e = ct_lookup(&k, now);
		if (e && ((e->kind == CT_KIND_SNAT && !e->reply) || (e->kind == CT_KIND_DNAT && e->reply))) {
			ct_refresh(&k, e, &p, now);
			tuple_of(&t, e);
			if (p.first_frag)
				frag_record(&p, CT_DIR_OUT, e->saddr, e->daddr, e->kind, e->reply, now);
			why = egress_reason(e->kind);
			if (tc_translate(skb, &p, st, &t, 0, 0))
				return tc_done(skb, DIR_TO_UPLINK, TC_ACT_SHOT, REASON_MALFORMED);
			return tc_done(skb, DIR_TO_UPLINK, TC_ACT_OK, why);
		}
	} else if (st == PKT_FRAGMENT) {
		f = frag_lookup(&p, CT_DIR_OUT, now);
		if (f && (f->kind == CT_KIND_SNAT || f->kind == CT_KIND_DNAT)) {
			t.saddr = f->saddr;
			t.daddr = f->daddr;
			t.sport = 0;
			t.dport = 0;
			if (tc_translate(skb, &p, st, &t, 0, 0))
				return tc_done(skb, DIR_TO_UPLINK, TC_ACT_SHOT, REASON_MALFORMED);
			return tc_done(skb, DIR_TO_UPLINK, TC_ACT_OK, egress_reason(f->kind));
		}
	} else if (st == PKT_ICMP_ERROR) {
		ret = egress_icmp_error(skb, &p, now);
		if (ret >= 0)
			return ret;
	}

	/* Not part of a known connection: masquerade it, if that is for us. */
	if (bpf_map_lookup_elem(&endpoint_by_ip, &p.daddr))
		return tc_done(skb, DIR_TO_UPLINK, TC_ACT_OK, REASON_NOT_NAT);
	net = bpf_map_lookup_elem(&networks, &src->network_id);
	if (!net)
		return tc_done(skb, DIR_TO_UPLINK, TC_ACT_SHOT, REASON_NO_NETWORK);
	if (net->flags & NETWORK_F_INTERNAL)
		return tc_done(skb, DIR_TO_UPLINK, TC_ACT_SHOT, REASON_INTERNAL);
	/* No masquerade address: the fabric's subnets are routed, and
	 * endpoints' addresses go out as they are. */
	hc = bpf_map_lookup_elem(&host_config, &zero);
	if (!hc || !hc->snat_addr || !hc->nat_port_min || hc->nat_port_max < hc->nat_port_min)
		return tc_done(skb, DIR_TO_UPLINK, TC_ACT_OK, REASON_NOT_NAT);

	switch (st) {
	case PKT_TUPLE:
		break;
	case PKT_FRAGMENT:
		return tc_done(skb, DIR_TO_UPLINK, TC_ACT_SHOT, REASON_FRAGMENT);
	case PKT_SHORT_L4:
		return tc_done(skb, DIR_TO_UPLINK, TC_ACT_SHOT, p.first_frag ? REASON_FRAGMENT : REASON_MALFORMED);
	default:
		return tc_done(skb, DIR_TO_UPLINK, TC_ACT_SHOT, REASON_NAT_UNSUPPORTED);
	}
	if (ct_quota_take(p.saddr, now))
		return tc_done(skb, DIR_TO_UPLINK, TC_ACT_SHOT, REASON_CT_QUOTA);
	if (snat_create(skb, &p, &k, hc, now, &created, &why)) {
		ct_quota_give(p.saddr);
		return tc_done(skb, DIR_TO_UPLINK, TC_ACT_SHOT, why);
	}
	tuple_of(&t, &created);
	if (p.first_frag)
		frag_record(&p, CT_DIR_OUT, t.saddr, t.daddr, CT_KIND_SNAT, 0, now);
	if (tc_translate(skb, &p, st, &t, 0, 0))
		return tc_done(skb, DIR_TO_UPLINK, TC_ACT_SHOT, REASON_MALFORMED);
	return tc_done(skb, DIR_TO_UPLINK, TC_ACT_OK, REASON_SNAT);
}
