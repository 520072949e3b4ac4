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
 *   - passes everything else for IPv4 to the host stack (routing, later NAT).
 *
 * Every path ends in exactly one counted verdict (see fabric.h for the
 * reasons). Nothing in here reads past the IPv4 header, so options and
 * fragments need no special case: the addresses are at fixed offsets.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "fabric.h"

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

/* done counts the packet under (from-endpoint, verdict of ret, reason) and
 * returns ret, so every exit is one line and none goes uncounted. */
static __always_inline int done(struct __sk_buff *skb, int ret, enum reason reason)
{
	enum verdict verdict = VERDICT_DROP;

	if (ret == TC_ACT_OK)
		verdict = VERDICT_PASS;
	else if (ret == TC_ACT_REDIRECT)
		verdict = VERDICT_REDIRECT;
	count(skb, DIR_FROM_ENDPOINT, verdict, reason);
	return ret;
}

/* linear makes the first n bytes directly readable. A veth can hand us a
 * non-linear skb whose headers are partly in fragments; pulling fixes that.
 * Returns 0 if the packet is shorter than n. Packet pointers are invalid
 * after a call: the caller reloads and re-checks them. */
static __always_inline int linear(struct __sk_buff *skb, __u32 n)
{
	if ((void *)(long)skb->data + n <= (void *)(long)skb->data_end)
		return 1;
	if (n > skb->len)
		return 0;
	return bpf_skb_pull_data(skb, n) == 0;
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

static __always_inline int in_subnet(const struct network *net, __be32 addr)
{
	return (addr & net->mask) == net->subnet;
}

/* from_endpoint_arp answers the sandbox's ARP requests in place: the
 * request becomes the reply and leaves through the same veth towards the
 * sandbox (bpf_redirect at ingress to the device itself = its egress). */
static __always_inline int from_endpoint_arp(struct __sk_buff *skb, const struct endpoint *ep,
					     const struct network *net, __u32 ifindex)
{
	const __u32 need = sizeof(struct ethhdr) + sizeof(struct arp_ipv4);
	void *data, *data_end;
	struct ethhdr *eth;
	struct arp_ipv4 *arp;
	__be32 spa, tpa;

	if (!linear(skb, need))
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + need > data_end)
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	eth = data;
	arp = data + sizeof(*eth);

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

static __always_inline int from_endpoint_ipv4(struct __sk_buff *skb, const struct endpoint *ep,
					      const struct network *net)
{
	const __u32 need = sizeof(struct ethhdr) + sizeof(struct iphdr);
	void *data, *data_end;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct endpoint *dst;
	__u32 hlen, tot;
	__be32 daddr;

	if (!linear(skb, need))
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + need > data_end)
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	eth = data;
	ip = data + sizeof(*eth);

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

	daddr = ip->daddr;
	dst = bpf_map_lookup_elem(&endpoint_by_ip, &daddr);
	if (!dst) {
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
	void *data, *data_end;
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
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
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
