//go:build ignore

/* tunnel.c: the tc program at the ingress of the host's flow-based VXLAN
 * device, i.e. overlay traffic from other nodes, already decapsulated by
 * the device, with the tunnel key (VNI, outer addresses) as metadata. It
 *
 *   - delivers IPv4 for a local endpoint straight to its sandbox with
 *     bpf_redirect_peer, as same-host forwarding does, if that endpoint's
 *     network is an overlay with the packet's VNI;
 *   - drops everything else: other VNIs (isolation across the tunnel),
 *     addresses no local endpoint holds, sources outside the network's
 *     subnet or claiming a local endpoint's address (anti-spoofing: the
 *     sending node's program checked its sandbox, but anyone who can reach
 *     the VXLAN port can send), sources whose remote entry names another
 *     node than the packet's outer source, and anything but IPv4 (remote sandboxes'
 *     ARP is answered on their own node and never crosses).
 *
 * Nothing goes to the host stack: the VXLAN device has no address and the
 * overlay's traffic to the outside leaves through the sender's own uplink.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "fabric.h"
#include "nat.h"

char __license[] SEC("license") = "GPL";

/* done counts the packet under (from-tunnel, verdict of ret, reason). */
static __always_inline int done(struct __sk_buff *skb, int ret, enum reason reason)
{
	return tc_done(skb, DIR_FROM_TUNNEL, ret, reason);
}

SEC("tc")
int from_tunnel(struct __sk_buff *skb)
{
	const __u32 need = sizeof(struct ethhdr) + sizeof(struct iphdr);
	struct bpf_tunnel_key key = {};
	struct remote_key rk = {};
	struct remote *r;
	struct endpoint *dst;
	struct network *dnet;
	void *data, *data_end;
	struct ethhdr *eth;
	struct iphdr *ip;
	__be32 saddr, daddr;
	__u32 hlen, tot;

	/* Fails on a packet the device did not decapsulate (no metadata),
	 * which is also what BPF_PROG_TEST_RUN hands the program. */
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0))
		return done(skb, TC_ACT_SHOT, REASON_NO_TUNNEL);
	if (skb->vlan_present)
		return done(skb, TC_ACT_SHOT, REASON_VLAN);

	if (!linear(skb, sizeof(struct ethhdr)))
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	data = skb_data(skb);
	data_end = skb_data_end(skb);
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return done(skb, TC_ACT_SHOT, REASON_UNSUPPORTED_L3);

	if (!linear(skb, need))
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	data = skb_data(skb);
	data_end = skb_data_end(skb);
	if (data + need > data_end)
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	ip = data + sizeof(struct ethhdr);
	/* The redirect skips ip_rcv's checks, as in from_endpoint. */
	if (ip->version != 4 || ip->ihl < 5)
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	hlen = ip->ihl * 4;
	tot = bpf_ntohs(ip->tot_len);
	if (tot < hlen || sizeof(struct ethhdr) + tot > skb->len)
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	saddr = ip->saddr;
	daddr = ip->daddr;

	dst = bpf_map_lookup_elem(&endpoint_by_ip, &daddr);
	if (!dst)
		return done(skb, TC_ACT_SHOT, REASON_NO_OWNER);
	dnet = bpf_map_lookup_elem(&networks, &dst->network_id);
	if (!dnet)
		return done(skb, TC_ACT_SHOT, REASON_NO_NETWORK);
	if (!dnet->vni || dnet->vni != key.tunnel_id)
		return done(skb, TC_ACT_SHOT, REASON_WRONG_VNI);
	/* The source must be a host address of the network that does not
	 * live here: a local endpoint's address or the gateway coming out of
	 * the tunnel is forged. */
	if (!in_subnet(dnet, saddr) || saddr == dnet->gateway || bpf_map_lookup_elem(&endpoint_by_ip, &saddr))
		return done(skb, TC_ACT_SHOT, REASON_SPOOFED_IP);
	/* And it must come from the node that holds it: anyone who reaches
	 * the VXLAN port (a sandbox through the host, a stranger on the
	 * underlay) can send, and VNIs are no secret. One lookup: the remote
	 * entry names its node. */
	rk.network_id = dst->network_id;
	rk.ipv4 = saddr;
	r = bpf_map_lookup_elem(&remotes, &rk);
	if (!r || r->node != bpf_htonl(key.remote_ipv4))
		return done(skb, TC_ACT_SHOT, REASON_TUNNEL_SOURCE);

	if (set_macs(skb, dst->mac, dnet->router_mac))
		return done(skb, TC_ACT_SHOT, REASON_MALFORMED);
	return done(skb, bpf_redirect_peer(dst->ifindex, 0), REASON_FORWARD);
}
