//go:build ignore

/* endpoint.c: the tc program on the host side of every endpoint's veth, at
 * ingress, i.e. traffic coming FROM the sandbox. There is no bridge: this
 * program is the sandbox's whole L2 neighbourhood. It
 *
 *   - answers the sandbox's ARP requests for its gateway and for every
 *     address of its subnet with the network's router MAC, so all traffic,
 *     on-link or not, comes to the program;
 *   - drops frames whose source MAC or IPv4 source is not the endpoint's
 *     (anti-spoofing), and IPv4 to a local endpoint of another network
 *     (isolation);
 *   - hands IPv4 for a local endpoint of the same network straight to that
 *     endpoint's sandbox with bpf_redirect_peer;
 *   - on an overlay network, sends IPv4 for a remote endpoint of the
 *     network into the host's flow-based VXLAN device, with the tunnel key
 *     (its node, the network's VNI) set (to_tunnel);
 *   - translates connections to a published port of this host (hairpin)
 *     and their replies, and hands them straight to the other endpoint,
 *     whatever its network: a published port is reachable from every
 *     network, as through the host;
 *   - passes everything else for IPv4 to the host stack (routing, and
 *     masquerade on the uplink, see uplink.c).
 *
 * Every path ends in exactly one counted verdict (see fabric.h for the
 * reasons). Only the NAT reads past the IPv4 header (nat.h); forwarding
 * and isolation need the addresses alone, at fixed offsets, so options and
 * fragments need no special case there.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "fabric.h"
#include "nat.h"

char __license[] SEC("license") = "GPL";

/* From <linux/if_arp.h>, which drags in libc headers a BPF build lacks. */
#define ARPHRD_ETHER 1
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2

/* The IPv4-over-Ethernet ARP payload (RFC 826). Addresses are byte arrays
 * because spa and tpa are not 4-byte aligned in the frame. */
struct arp_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__u8 spa[4];
	__u8 tha[ETH_ALEN];
	__u8 tpa[4];
};

/* done counts the packet under (from-endpoint, verdict of ret, reason). */
static __always_inline int done(struct __sk_buff *skb, int ret, enum reason reason)
{
	return tc_done(skb, DIR_FROM_ENDPOINT, ret, reason);
}

static __always_inline __be32 load_be32(const __u8 *p)
{
	__be32 v;

	__builtin_memcpy(&v, p, sizeof(v));
	return v;
}

static __always_inline void store_be32(__u8 *p, __be32 v)
{
	__builtin_memcpy(p, &v, sizeof(v));
}

/* from_endpoint_arp answers the sandbox's ARP requests in place: the
 * request becomes the reply and leaves through the same veth towards the
 * sandbox (bpf_redirect at ingress to the device itself = its egress). */
static __always_inline int from_endpoint_arp(struct __sk_buff *skb, const struct endpoint *ep,
					     const struct network *net, __u32 ifindex)
{
	const __u32 need = sizeof(struct ethhdr) + sizeof(struct arp_ipv4);
	struct ethhdr *eth;
	struct arp_ipv4 *arp;
	__be32 spa, tpa;

	if (!linear(skb, need))
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	eth = skb_head(skb, need);
	if (!eth)
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	arp = (void *)(eth + 1);

	if (arp->htype != bpf_htons(ARPHRD_ETHER) || arp->ptype != bpf_htons(ETH_P_IP) ||
	    arp->hlen != ETH_ALEN || arp->plen != 4)
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	/* The Ethernet source was checked by the caller; the ARP sender MAC is
	 * what a neighbour cache learns, so it must be the endpoint's too. */
	if (!mac_eq(arp->sha, ep->mac))
		return done(skb, TC_ACT_SHOT, REASON_SPOOFED_MAC);
	spa = load_be32(arp->spa);
	tpa = load_be32(arp->tpa);

	if (arp->op == bpf_htons(ARPOP_REPLY)) {
		/* The sandbox answering the host's request for its address: the
		 * host needs it to reach the sandbox. */
		if (spa != ep->ipv4)
			return done(skb, TC_ACT_SHOT, REASON_SPOOFED_IP);
		return done(skb, TC_ACT_OK, REASON_ARP_TO_HOST);
	}
	if (arp->op != bpf_htons(ARPOP_REQUEST))
		return done(skb, TC_ACT_SHOT, REASON_ARP_IGNORED);
	/* A probe (RFC 5227, sender 0.0.0.0) asks "is my address taken?";
	 * answering would make the sandbox give its own address up. */
	if (spa == 0)
		return done(skb, TC_ACT_SHOT, REASON_ARP_IGNORED);
	if (spa != ep->ipv4)
		return done(skb, TC_ACT_SHOT, REASON_SPOOFED_IP);
	/* An announcement (target = sender) tells neighbours about a change;
	 * the maps, not ARP, say where addresses are. */
	if (tpa == spa)
		return done(skb, TC_ACT_SHOT, REASON_ARP_IGNORED);
	/* Off-subnet targets are not on-link for the sandbox; it asks only
	 * because of a route of its own, which this network does not serve. */
	if (tpa != net->gateway && !in_subnet(net, tpa))
		return done(skb, TC_ACT_SHOT, REASON_ARP_IGNORED);

	mac_copy(eth->h_dest, ep->mac);
	mac_copy(eth->h_source, net->router_mac);
	arp->op = bpf_htons(ARPOP_REPLY);
	mac_copy(arp->tha, ep->mac);
	store_be32(arp->tpa, spa);
	mac_copy(arp->sha, net->router_mac);
	store_be32(arp->spa, tpa);
	return done(skb, bpf_redirect(ifindex, 0), REASON_ARP_REPLY);
}

/* deliver_peer hands a translated packet to a local endpoint's sandbox,
 * from that endpoint's router, as a same-network forward would. */
static __always_inline int deliver_peer(struct __sk_buff *skb, const struct endpoint *dst, enum reason reason)
{
	struct network *dnet = bpf_map_lookup_elem(&networks, &dst->network_id);

	if (!dnet)
		return done(skb, TC_ACT_SHOT, REASON_NO_NETWORK);
	if (set_macs(skb, dst->mac, dnet->router_mac))
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	return done(skb, bpf_redirect_peer(dst->ifindex, 0), reason);
}

static __always_inline int deliver_translated(struct __sk_buff *skb, const struct pkt *p, int status,
					      const struct tuple *t, __be32 outer_saddr, __be32 outer_daddr,
					      const struct endpoint *dst, enum reason reason)
{
	if (tc_translate(skb, p, status, t, outer_saddr, outer_daddr))
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	return deliver_peer(skb, dst, reason);
}

static __always_inline enum reason hairpin_reason(__u8 reply)
{
	return reply ? REASON_DNAT_REPLY : REASON_HAIRPIN;
}

/* hairpin_new starts a connection from ep to the published port pt: to
 * the target endpoint directly, with the source left as it is so the
 * target sees its real client. Only a sandbox talking to itself through
 * its own published port gets its gateway as the source: its own address
 * coming in from outside would be a martian to it. */
static __always_inline int hairpin_new(struct __sk_buff *skb, const struct endpoint *ep, const struct network *net,
				       const struct pkt *p, const struct ct_key *ok, const struct port_target *pt,
				       __u64 now, int *ret)
{
	struct ct_entry ov = {};
	struct endpoint *dst;
	struct network *dnet;
	enum reason why;
	struct tuple t;
	__be32 client;

	dst = bpf_map_lookup_elem(&endpoint_by_ip, &pt->addr);
	if (!dst)
		return 0; /* not here: the host stack answers, as for a closed port */
	dnet = bpf_map_lookup_elem(&networks, &dst->network_id);
	if (!dnet)
		return 0;
	if ((net->flags | dnet->flags) & NETWORK_F_INTERNAL) {
		*ret = done(skb, TC_ACT_SHOT, REASON_INTERNAL);
		return 1;
	}
	client = dst->ipv4 == ep->ipv4 ? dnet->gateway : p->saddr;

	if (ct_open_port(p, ok, pt, client, CT_KIND_HAIRPIN, CT_DIR_OUT, now, &ov, &why)) {
		*ret = done(skb, TC_ACT_SHOT, why);
		return 1;
	}
	if (p->first_frag)
		frag_record(p, CT_DIR_OUT, ov.saddr, ov.daddr, CT_KIND_HAIRPIN, 0, now);
	tuple_of(&t, &ov);
	*ret = deliver_translated(skb, p, PKT_TUPLE, &t, 0, 0, dst, REASON_HAIRPIN);
	return 1;
}

/* endpoint_nat takes what the sandbox sends on a hairpin connection (to a
 * published port of this host, or a reply on one) and delivers it
 * translated; conntrack-known flows skip the isolation check, since the
 * published port is what joined the networks. Masquerade and replies to
 * remote clients of published ports are the uplink's (to_uplink): the host
 * must route them first, and a reply with the host's address as its
 * source would be a martian to the host's routing. Returns 1 with *ret set
 * if it took the packet, 0 to go on without NAT. Invalidates packet
 * pointers either way. */
static __always_inline int endpoint_nat(struct __sk_buff *skb, const struct endpoint *ep, const struct network *net,
					int *ret)
{
	struct port_target *pt;
	struct frag_entry *f;
	struct endpoint *dst;
	struct ct_entry *e;
	struct ct_key k = {};
	struct pkt p = {};
	struct tuple t;
	void *data, *data_end;
	__u64 now;
	int st;

	if (!tc_pull_headers(skb))
		return 0;
	data = skb_data(skb);
	data_end = skb_data_end(skb);
	st = parse_ipv4(data, data_end, skb->len, &p);
	if (st != PKT_TUPLE && st != PKT_FRAGMENT && st != PKT_ICMP_ERROR)
		return 0;
	now = bpf_ktime_get_ns();

	if (st == PKT_FRAGMENT) {
		f = frag_lookup(&p, CT_DIR_OUT, now);
		if (!f || f->kind != CT_KIND_HAIRPIN)
			return 0;
		dst = bpf_map_lookup_elem(&endpoint_by_ip, &f->daddr);
		if (!dst)
			return 0;
		t.saddr = f->saddr;
		t.daddr = f->daddr;
		t.sport = 0;
		t.dport = 0;
		*ret = deliver_translated(skb, &p, st, &t, 0, 0, dst, hairpin_reason(f->reply));
		return 1;
	}

	if (st == PKT_ICMP_ERROR) {
		/* An error about a hairpin packet the sandbox received: the
		 * reverse of the quoted tuple is its own entry, and the error
		 * goes to the other end, which must see what it sent. */
		k.saddr = p.inner_daddr;
		k.daddr = p.inner_saddr;
		k.sport = p.inner_dport;
		k.dport = p.inner_sport;
		k.proto = p.inner_proto;
		k.dir = CT_DIR_OUT;
		e = ct_lookup(&k, now);
		if (!e || e->kind != CT_KIND_HAIRPIN || p.daddr != p.inner_saddr)
			return 0;
		dst = bpf_map_lookup_elem(&endpoint_by_ip, &e->daddr);
		if (!dst)
			return 0;
		t.saddr = e->daddr;
		t.daddr = e->saddr;
		t.sport = e->dport;
		t.dport = e->sport;
		*ret = deliver_translated(skb, &p, st, &t, p.saddr == p.inner_daddr ? e->saddr : p.saddr, e->daddr,
					  dst, hairpin_reason(e->reply));
		return 1;
	}

	ct_key_of(&k, &p, CT_DIR_OUT);
	e = ct_lookup(&k, now);
	if (e) {
		if (e->kind != CT_KIND_HAIRPIN)
			return 0;
		dst = bpf_map_lookup_elem(&endpoint_by_ip, &e->daddr);
		if (!dst)
			return 0; /* the other end is gone: let the host answer */
		ct_refresh(&k, e, &p, now);
		if (p.first_frag)
			frag_record(&p, CT_DIR_OUT, e->saddr, e->daddr, e->kind, e->reply, now);
		tuple_of(&t, e);
		*ret = deliver_translated(skb, &p, st, &t, 0, 0, dst, hairpin_reason(e->reply));
		return 1;
	}
	if (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP)
		return 0;
	pt = lookup_port(p.proto, p.daddr, p.dport);
	if (!pt)
		return 0;
	return hairpin_new(skb, ep, net, &p, &k, pt, now, ret);
}

/* to_tunnel sends a packet for daddr, an address of ep's overlay network
 * that no local endpoint holds, to the remote endpoint holding it: the
 * final inner MACs (the remote sandbox's, from the network's router, so
 * both ends see the same L2 neighbour they ARPed for; a flow-based VXLAN
 * device also drops frames from its own MAC), the tunnel key, and a
 * redirect into the VXLAN device, which encapsulates and routes. An
 * address nobody holds is dropped here rather than routed: the host has
 * no better idea where it is. */
static __always_inline int to_tunnel(struct __sk_buff *skb, const struct endpoint *ep, const struct network *net,
				     __be32 daddr)
{
	struct remote_key rk = { .network_id = ep->network_id, .ipv4 = daddr };
	struct bpf_tunnel_key key = {};
	struct host_config *hc;
	struct remote *r;
	__u32 zero = 0;

	r = bpf_map_lookup_elem(&remotes, &rk);
	if (!r)
		return done(skb, TC_ACT_SHOT, REASON_NO_REMOTE);
	hc = bpf_map_lookup_elem(&host_config, &zero);
	if (!hc || !hc->tunnel_ifindex)
		return done(skb, TC_ACT_SHOT, REASON_NO_TUNNEL);
	if (set_macs(skb, r->mac, net->router_mac))
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	key.tunnel_id = net->vni;
	key.remote_ipv4 = bpf_ntohl(r->node);
	key.local_ipv4 = bpf_ntohl(hc->tunnel_local);
	key.tunnel_ttl = 64;
	/* No outer UDP checksum, as the kernel's VXLAN devices default to
	 * (the inner packet carries its own). */
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX))
		return done(skb, TC_ACT_SHOT, REASON_NO_TUNNEL);
	return done(skb, bpf_redirect(hc->tunnel_ifindex, 0), REASON_TO_TUNNEL);
}

/* to_guarded_port: is this packet, which goes to the host stack, for one
 * of fabric's own ports on the host (gossip, tunnel, metrics: the policy
 * map), or for the tunnel port of any host? A sandbox must never talk to
 * the agent or inject into the tunnel, neither through its gateway nor,
 * masqueraded to its host's address, into another node's. The ports are
 * checked first and the address only on a match, so ordinary traffic to
 * the host and egress pay one inlined array lookup and a few compares.
 * Invalidates packet pointers. */
static __always_inline int to_guarded_port(struct __sk_buff *skb, const struct network *net, __be32 daddr)
{
	struct host_policy *pol;
	void *data, *data_end;
	struct iphdr *ip;
	__be16 *l4, dport;
	__u32 zero = 0, hlen, i;
	int hit = 0;
	__u8 proto;

	pol = bpf_map_lookup_elem(&policy, &zero);
	if (!pol || (!pol->guard_tcp[0] && !pol->guard_udp[0] && !pol->tunnel_port))
		return 0;
	data = skb_data(skb);
	data_end = skb_data_end(skb);
	ip = data + sizeof(struct ethhdr);
	if ((void *)(ip + 1) > data_end)
		return 0;
	proto = ip->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;
	if (ip->frag_off & bpf_htons(IP_OFFSET))
		return 0; /* no ports here; the host cannot reassemble it without the first */
	hlen = ip->ihl * 4;
	if (!linear(skb, sizeof(struct ethhdr) + hlen + 4))
		return 0; /* too short to have ports: the host drops it */
	data = skb_data(skb);
	data_end = skb_data_end(skb);
	if (hlen > IPV4_MAX_HLEN)
		return 0;
	l4 = data + sizeof(struct ethhdr) + hlen;
	if ((void *)(l4 + 2) > data_end)
		return 0;
	dport = l4[1];
	if (proto == IPPROTO_UDP && pol->tunnel_port && dport == pol->tunnel_port)
		return 1;
#pragma unroll
	for (i = 0; i < GUARD_PORTS; i++)
		hit |= (proto == IPPROTO_TCP ? pol->guard_tcp[i] : pol->guard_udp[i]) == dport;
	if (!hit || !dport)
		return 0;
	return daddr == net->gateway || daddr == 0xffffffff || daddr == (net->subnet | ~net->mask) ||
	       (daddr & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000) || bpf_map_lookup_elem(&host_addrs, &daddr);
}

static __always_inline int from_endpoint_ipv4(struct __sk_buff *skb, const struct endpoint *ep,
					      const struct network *net)
{
	const __u32 need = sizeof(struct ethhdr) + sizeof(struct iphdr);
	struct ethhdr *eth;
	struct iphdr *ip;
	struct endpoint *dst;
	__u32 hlen, tot;
	__be32 daddr;
	int ret;

	if (!linear(skb, need))
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	eth = skb_head(skb, need);
	if (!eth)
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	ip = (void *)(eth + 1);

	/* The receiving stack would drop these too, but the redirect skips the
	 * host's ip_rcv checks, so the program is the last one to see a
	 * malformed header before another sandbox does. Options are fine. */
	if (ip->version != 4 || ip->ihl < 5)
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	hlen = ip->ihl * 4;
	tot = bpf_ntohs(ip->tot_len);
	if (tot < hlen || sizeof(*eth) + tot > skb->len)
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	if (ip->saddr != ep->ipv4)
		return done(skb, TC_ACT_SHOT, REASON_SPOOFED_IP);

	if (endpoint_nat(skb, ep, net, &ret))
		return ret;
	eth = skb_head(skb, need);
	if (!eth)
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	ip = (void *)(eth + 1);

	daddr = ip->daddr;
	dst = bpf_map_lookup_elem(&endpoint_by_ip, &daddr);
	if (!dst && net->vni && in_subnet(net, daddr) && daddr != net->gateway)
		return to_tunnel(skb, ep, net, daddr);
	if (!dst) {
		if (to_guarded_port(skb, net, daddr))
			return done(skb, TC_ACT_SHOT, REASON_HOST_PORT);
		eth = skb_head(skb, need);
		if (!eth)
			return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
		/* For the host: the gateway, another host, the outside. The
		 * frame is addressed to the router MAC, which need not be the
		 * veth's own, so the stack classified it as PACKET_OTHERHOST
		 * and ip_rcv would drop it. It is for us: say so. */
		if (skb->pkt_type == PACKET_OTHERHOST && mac_eq(eth->h_dest, net->router_mac))
			bpf_skb_change_type(skb, PACKET_HOST);
		return done(skb, TC_ACT_OK, REASON_TO_HOST);
	}
	if (dst->network_id != ep->network_id)
		return done(skb, TC_ACT_SHOT, REASON_CROSS_NETWORK);

	/* Same network: one L2 segment, as on a bridge, so the TTL is left
	 * alone (no hop, no checksum update). The destination sees its
	 * gateway's MAC as the source, the same MAC its ARP replies carry. */
	mac_copy(eth->h_dest, dst->mac);
	mac_copy(eth->h_source, net->router_mac);
	return done(skb, bpf_redirect_peer(dst->ifindex, 0), REASON_FORWARD);
}

SEC("tc")
int from_endpoint(struct __sk_buff *skb)
{
	/* ingress_ifindex, not ifindex: equal at tc ingress (the device the
	 * packet arrived on), but BPF_PROG_TEST_RUN lets tests set only
	 * ingress_ifindex freely; ifindex must name a real device there. */
	__u32 ifindex = skb->ingress_ifindex;
	struct endpoint *ep;
	struct network *net;
	struct ethhdr *eth;

	/* Fail closed: a veth the maps do not know (attached before its
	 * endpoint was stored, or after it was deleted) forwards nothing. */
	ep = bpf_map_lookup_elem(&endpoints, &ifindex);
	if (!ep)
		return done(skb, TC_ACT_SHOT, REASON_NO_ENDPOINT);
	net = bpf_map_lookup_elem(&networks, &ep->network_id);
	if (!net)
		return done(skb, TC_ACT_SHOT, REASON_NO_NETWORK);
	/* A tag the veth carried out of band would survive the redirect and
	 * put the frame on a VLAN the destination never joined. */
	if (skb->vlan_present)
		return done(skb, TC_ACT_SHOT, REASON_VLAN);

	if (!linear(skb, sizeof(*eth)))
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	eth = skb_head(skb, sizeof(*eth));
	if (!eth)
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	if (!mac_eq(eth->h_source, ep->mac))
		return done(skb, TC_ACT_SHOT, REASON_SPOOFED_MAC);

	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return from_endpoint_ipv4(skb, ep, net);
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return from_endpoint_arp(skb, ep, net, ifindex);
	/* IPv6 included: there is no anti-spoofing for it yet, so a sandbox
	 * must not be able to send any. Sandboxes should disable IPv6. */
	return done(skb, TC_ACT_SHOT, REASON_UNSUPPORTED_L3);
}
