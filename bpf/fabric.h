/* fabric.h: the maps, value layouts and counter indices shared by fabric's
 * eBPF programs and mirrored by the Go side (package bpf). Changing a layout
 * here changes the Go types bpf2go generates; a pinned map of the old shape
 * must then be recreated, never reused.
 *
 * Map layouts
 *
 *   endpoints       HASH  __u32 host-side ifindex -> struct endpoint
 *   endpoint_by_ip  HASH  __be32 IPv4 address     -> struct endpoint
 *   networks        HASH  __u32 network id        -> struct network
 *   ports           HASH  struct port_key         -> struct port_target
 *   host_addrs      HASH  __be32 host address     -> __u32 (1)
 *   host_config     ARRAY 0                       -> struct host_config
 *   counters        PERCPU_ARRAY counter_index()  -> struct counter
 *   subnets         LPM_TRIE struct subnet_key    -> __u32 network id
 *   ct              LRU_HASH struct ct_key        -> struct ct_entry
 *   ct_frag         LRU_HASH struct frag_key      -> struct frag_entry
 *   remotes         HASH  struct remote_key       -> struct remote
 *   policy          ARRAY 0                       -> struct host_policy
 *   ct_quota        LRU_HASH __be32 source        -> struct ct_pending
 *   ct_stats        PERCPU_ARRAY enum ct_stat     -> __u64
 *
 * Both endpoint maps hold the same value: `endpoints` answers "who is
 * sending on this veth?", `endpoint_by_ip` answers "where does this address
 * live?". Addresses are unique per host across networks (the host routes
 * every subnet, so two networks on one host cannot overlap), which is why
 * the address alone is the key and why a hit on another network is a
 * cross-network packet rather than a different destination.
 *
 * A sandbox on networks A and B has one endpoint (one veth, one address)
 * per network, so isolation is one comparison: forward only if the sending
 * endpoint's network equals the receiving endpoint's network.
 *
 * Overlay networks (network.vni != 0) span hosts. Their local endpoints are
 * in the endpoint maps like any other; `remotes` holds the ones on other
 * nodes, keyed by (network, address) because a remote address is only
 * meaningful within its network: the node to tunnel to and the MAC the
 * remote sandbox expects. The programs reach them through the host's one
 * flow-based VXLAN device (host_config.tunnel_ifindex; tunnel.c receives).
 *
 * Connection tracking (NAT)
 *
 * `ct` holds two entries per translated connection, one per direction of
 * travel. A key is the tuple of a packet as a program sees it before
 * translation plus the side it came from: CT_DIR_OUT for packets sent by a
 * local endpoint (seen by from_endpoint and to_uplink), CT_DIR_IN for
 * packets that arrived through the uplink (xdp_uplink, from_uplink). The
 * side keeps a packet from the uplink that claims an endpoint's address
 * from ever matching an entry made for that endpoint's own packets. The
 * value is the tuple the packet leaves with, so translating is "make the
 * header say this". ICMP echo uses the identifier as a port: sport for
 * requests, dport for replies, the other one 0, so that a reply's tuple is
 * the reverse of its request's as with TCP and UDP.
 *
 *   kind     original direction (reply=0)       reply direction (reply=1)
 *   SNAT     OUT ep:p  -> X:q  => snat:p' -> X:q  IN  X:q -> snat:p' => X:q -> ep:p
 *   DNAT     IN  C:c -> H:h    => C:c -> E:e      OUT E:e -> C:c      => H:h -> C:c
 *   HAIRPIN  OUT A:a -> H:h    => A':a -> E:e     OUT E:e -> A':a     => H:h -> A:a
 *
 * (masquerade to the uplink address; a published port H:h from outside;
 * the same from a local endpoint A, where A' is A, or A's gateway when A is
 * E itself.) The reply entry's key is the reverse of the original entry's
 * value and the other way round; both carry the same state flags and
 * last_seen, refreshed together at most once per CT_REFRESH_NS. An entry
 * older than its timeout (see ct_timeout in conntrack.h: TCP 5 s until the
 * reply direction is seen, 60 s from the answer to a SYN until the original
 * side acknowledges it, then 6 h, 120 s after one FIN, 10 s after FINs
 * both ways or a RST; UDP 60 s / 120 s; ICMP 30 s) counts as absent and its
 * tuple may be taken again; LRU eviction is the only deletion the programs
 * need.
 *
 * A flood of new connections must not push everyone else's out of the
 * LRU: each source address (an endpoint for masquerade and hairpin, the
 * client for a published port) may have at most policy.ct_pending_max
 * unanswered connections per window (`ct_quota`, see ct_quota_take);
 * past it, its new connections are dropped (reason ct-quota) and nobody
 * else's entries are touched.
 *
 * `ct_frag` lets the fragments after the first follow it: translating a
 * first fragment records (addresses, IP id, protocol, side) -> the new
 * addresses; later fragments carry no ports and need only those.
 *
 * `subnets` maps every network's subnet to its id, so that the uplink
 * programs can tell a fabric address from any other by its prefix.
 */
#ifndef FABRIC_H
#define FABRIC_H

#include <linux/bpf.h>
#include <linux/types.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#define MAX_ENDPOINTS 16384
#define MAX_NETWORKS 4096

/* Counter index space: direction x verdict x reason. Sizes leave room for
 * the directions and reasons the tunnel and uplink programs will add, so
 * adding one does not change the map's shape. */
#define DIRECTION_MAX 8
#define VERDICT_MAX 4
#define REASON_MAX 64
#define COUNTERS_MAX (DIRECTION_MAX * VERDICT_MAX * REASON_MAX)

/* Where a packet was seen. */
enum direction {
	DIR_FROM_ENDPOINT = 0, /* tc ingress of an endpoint's host-side veth */
	DIR_FROM_UPLINK = 1,   /* tc ingress of the uplink */
	DIR_TO_UPLINK = 2,     /* tc egress of the uplink */
	DIR_XDP_UPLINK = 3,    /* XDP on the uplink */
	DIR_SOCKET = 4,        /* cgroup sock_addr hooks (connect4, sendmsg4, recvmsg4) */
	DIR_FROM_TUNNEL = 5,   /* tc ingress of the flow-based VXLAN device */
	DIR_TO_ENDPOINT = 6,   /* tc egress of an endpoint's host-side veth */
};

/* What the program did with it. */
enum verdict {
	VERDICT_PASS = 0,     /* TC_ACT_OK: continue into the host stack */
	VERDICT_DROP = 1,     /* TC_ACT_SHOT */
	VERDICT_REDIRECT = 2, /* TC_ACT_REDIRECT: bpf_redirect / bpf_redirect_peer */
};

/* Why. Values are stable: they index the counters and appear in metrics. */
enum reason {
	REASON_FORWARD = 0,        /* to a local endpoint on the same network */
	REASON_ARP_REPLY = 1,      /* ARP request answered with the router MAC */
	REASON_TO_HOST = 2,        /* not a local endpoint: host stack routes it */
	REASON_ARP_TO_HOST = 3,    /* ARP reply from the sandbox, for the host */
	REASON_NO_ENDPOINT = 4,    /* ingress ifindex is not a known endpoint */
	REASON_NO_NETWORK = 5,     /* endpoint's network is not in `networks` */
	REASON_MALFORMED = 6,      /* truncated or invalid headers */
	REASON_SPOOFED_MAC = 7,    /* source MAC is not the endpoint's */
	REASON_SPOOFED_IP = 8,     /* source IPv4 is not the endpoint's */
	REASON_CROSS_NETWORK = 9,  /* destination endpoint is on another network */
	REASON_ARP_IGNORED = 10,   /* probe, announcement, off-subnet target, other op */
	REASON_UNSUPPORTED_L3 = 11, /* neither IPv4 nor ARP (IPv6 included) */
	REASON_VLAN = 12,          /* VLAN-tagged frame from a sandbox */
	REASON_SNAT = 13,          /* egress masqueraded to the uplink address */
	REASON_SNAT_REPLY = 14,    /* reply to a masqueraded flow, translated back */
	REASON_DNAT = 15,          /* to a published port, translated to its endpoint */
	REASON_DNAT_REPLY = 16,    /* reply from a published port, translated back */
	REASON_HAIRPIN = 17,       /* endpoint to a published port on this host */
	REASON_NAT_EXHAUSTED = 18, /* no free source port for masquerade */
	REASON_CT_FULL = 19,       /* conntrack insert failed */
	REASON_NO_OWNER = 20,      /* to a fabric address no endpoint holds */
	REASON_FRAGMENT = 21,      /* IPv4 fragment that NAT cannot translate */
	REASON_SOCK_REWRITE = 22,  /* host socket sent straight to a published port's endpoint */
	REASON_INTERNAL = 23,      /* leaving or entering an --internal network */
	REASON_NOT_NAT = 24,       /* passed untouched: not a fabric flow */
	REASON_NAT_UNSUPPORTED = 25, /* from an endpoint, needs masquerade, but not TCP/UDP/ICMP echo with a whole header */
	REASON_TO_TUNNEL = 26,     /* to a remote endpoint of an overlay network, through the VXLAN device */
	REASON_NO_REMOTE = 27,     /* overlay address neither local nor a known remote */
	REASON_SOCK_REPLY = 28,    /* reply or peer of a rewritten host socket shown as the published address */
	REASON_WRONG_VNI = 29,     /* from the tunnel: destination's network is not an overlay with the packet's VNI */
	REASON_NO_TUNNEL = 30,     /* no tunnel device configured, or a packet without tunnel metadata */
	REASON_HOST_PORT = 31,     /* from a sandbox to one of fabric's own ports on the host (gossip, tunnel, metrics) */
	REASON_TUNNEL_SOURCE = 32, /* from the tunnel: outer source is not the node that owns the inner source */
	REASON_CT_QUOTA = 33,      /* new connection over its source's quota of unanswered ones */
	/* From the tunnel, delivered is (from-tunnel, redirect, forward). */
};

/* One endpoint: the value of both `endpoints` and `endpoint_by_ip`. */
struct endpoint {
	__u32 ifindex;    /* host-side veth, in the host namespace */
	__be32 ipv4;      /* the sandbox's address */
	__u8 mac[6];      /* the sandbox-side MAC */
	__u16 pad;        /* must be zero */
	__u32 network_id; /* never 0 */
};

/* One network, keyed by its id. */
struct network {
	__be32 gateway;    /* the sandbox's next hop */
	__be32 subnet;     /* network address, in network byte order */
	__be32 mask;       /* netmask, in network byte order */
	__u8 router_mac[6]; /* what the program answers ARP with and writes as source MAC */
	__u16 flags;       /* NETWORK_F_* */
	__u32 vni;         /* an overlay network's VXLAN network identifier; 0: not an overlay */
};

/* network.flags */
#define NETWORK_F_INTERNAL 1 /* no masquerade, no published ports, no egress */

/* A published port: key of `ports`. host_addr 0 means every address of the
 * host (lookups try the exact address first, then 0). */
struct port_key {
	__be32 host_addr;
	__be16 port;  /* host port, network byte order */
	__u8 proto;   /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;     /* must be zero */
};

/* Where a published port leads. */
struct port_target {
	__be32 addr;      /* the endpoint's address (a key of endpoint_by_ip) */
	__be16 port;      /* port inside the sandbox, network byte order */
	__u16 pad;        /* must be zero */
};

/* The host, as the NAT and socket programs need it: the single entry of
 * `host_config`. */
struct host_config {
	__u64 netns_cookie;  /* the host namespace (socket hooks act only there) */
	__be32 snat_addr;    /* masquerade source: the uplink's IPv4 address */
	__u32 uplink_ifindex;
	__u16 nat_port_min;  /* masquerade source port range, host byte order */
	__u16 nat_port_max;
	__u32 tunnel_ifindex; /* the flow-based VXLAN device; 0: none (overlay traffic is dropped) */
	__be32 tunnel_local;  /* outer source address of tunnelled packets; 0: the route's */
	__u32 pad;            /* must be zero */
};

/* Key of `remotes`: a remote endpoint of an overlay network. */
struct remote_key {
	__u32 network_id;
	__be32 ipv4;
};

/* Where a remote endpoint lives. */
struct remote {
	__be32 node;     /* underlay address of its node: the outer destination */
	__u8 mac[6];     /* its sandbox-side MAC: the inner destination */
	__u16 pad;       /* must be zero */
};

/* What the agent tells the programs about its own limits: the single entry
 * of `policy`. A separate map from host_config so that adding it left the
 * pinned maps' layouts as they were. */
#define GUARD_PORTS 4
struct host_policy {
	__be16 guard_tcp[GUARD_PORTS]; /* host TCP ports no sandbox may reach (0: unused slot) */
	__be16 guard_udp[GUARD_PORTS]; /* host UDP ports no sandbox may reach */
	__u32 ct_pending_max;          /* unanswered connections one source may start per window; 0: no limit */
	__be16 tunnel_port;            /* UDP to it is dropped whatever the destination: every node's tunnel; 0: none */
	__u16 pad;                     /* must be zero */
};

/* One source's unanswered connections (ct_quota): counted up when one is
 * made, down when it is answered, reset when the window has passed. */
struct ct_pending {
	__u64 since; /* start of the window */
	__s64 count;
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

/* Key of `subnets`: prefixlen first, as LPM_TRIE requires. */
struct subnet_key {
	__u32 prefixlen;
	__be32 addr;
};

/* Which side a packet came from (struct ct_key.dir, struct frag_key.dir). */
enum ct_dir {
	CT_DIR_OUT = 0, /* sent by a local endpoint */
	CT_DIR_IN = 1,  /* arrived through the uplink */
};

/* What made a connection (struct ct_entry.kind). */
enum ct_kind {
	CT_KIND_SNAT = 1,    /* masquerade of an endpoint's connection to the outside */
	CT_KIND_DNAT = 2,    /* a published port, reached from outside */
	CT_KIND_HAIRPIN = 3, /* a published port, reached from a local endpoint */
};

/* struct ct_entry.flags: the connection's state, the same in both entries. */
#define CT_F_REPLIED 1   /* a packet went the reply direction */
#define CT_F_FIN_ORIG 2  /* TCP FIN in the original direction */
#define CT_F_FIN_REPLY 4 /* TCP FIN in the reply direction */
#define CT_F_RST 8       /* TCP RST either way */
#define CT_F_SYN_SENT 16 /* made by a TCP SYN and not yet acknowledged by the original side */

struct ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport; /* TCP/UDP port; ICMP echo: id in requests, else 0 */
	__be16 dport; /* TCP/UDP port; ICMP echo: id in replies, else 0 */
	__u8 proto;
	__u8 dir;     /* enum ct_dir */
	__u16 pad;    /* must be zero */
};

struct ct_entry {
	__u64 last_seen; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the last refresh */
	__be32 saddr;    /* the tuple the packet leaves with */
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 kind;       /* enum ct_kind */
	__u8 flags;      /* CT_F_* */
	__u8 reply;      /* 1: this entry is the reply direction's */
	__u8 rev_dir;    /* dir of the other entry's key */
};

struct frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;    /* IPv4 identification */
	__u8 proto;
	__u8 dir;     /* enum ct_dir */
};

struct frag_entry {
	__u64 last_seen; /* of the first fragment; the entry is good for CT_FRAG_TIMEOUT */
	__be32 saddr;    /* the addresses the fragments leave with */
	__be32 daddr;
	__u8 kind;       /* enum ct_kind of the connection */
	__u8 reply;      /* direction within it, as struct ct_entry.reply */
	__u16 pad;
	__u32 pad2;
};


struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, struct endpoint);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	__type(key, __be32);
	__type(value, struct endpoint);
} endpoint_by_ip SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_NETWORKS);
	__type(key, __u32);
	__type(value, struct network);
} networks SEC(".maps");

#define MAX_PORTS 65536
#define MAX_HOST_ADDRS 256

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PORTS);
	__type(key, struct port_key);
	__type(value, struct port_target);
} ports SEC(".maps");

/* Every IPv4 address of the host namespace (value unused, 1). A published
 * port with host_addr 0 answers on these. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_HOST_ADDRS);
	__type(key, __be32);
	__type(value, __u32);
} host_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct host_config);
} host_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTERS_MAX);
	__type(key, __u32);
	__type(value, struct counter);
} counters SEC(".maps");

#define MAX_CT 262144
#define MAX_CT_FRAG 8192

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_NETWORKS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct subnet_key);
	__type(value, __u32);
} subnets SEC(".maps");

/* LRU: a full table evicts the least recently used connection instead of
 * refusing new ones; which is also why nothing has to delete entries. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CT);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
} ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CT_FRAG);
	__type(key, struct frag_key);
	__type(value, struct frag_entry);
} ct_frag SEC(".maps");

#define MAX_REMOTES 65536

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_REMOTES);
	__type(key, struct remote_key);
	__type(value, struct remote);
} remotes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct host_policy);
} policy SEC(".maps");

#define MAX_CT_PENDING 65536

/* LRU: a flood from many sources evicts quota entries rather than filling
 * the map; an evicted source starts a new window. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CT_PENDING);
	__type(key, __be32);
	__type(value, struct ct_pending);
} ct_quota SEC(".maps");

/* Connection-table bookkeeping (ct_stats, per CPU): entries the programs
 * inserted as new keys and deleted. The kernel does not report LRU
 * evictions; inserts - deletes - entries held is how many there were. */
enum ct_stat {
	CT_STAT_INSERTS = 0,
	CT_STAT_DELETES = 1,
};
#define CT_STAT_MAX 4

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CT_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} ct_stats SEC(".maps");

static __always_inline void ct_stat(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&ct_stats, &which);

	if (v)
		(*v)++;
}

/* Never called: puts the conntrack enums into BTF, as bpf2go_enums below. */
__attribute__((used)) static int bpf2go_ct_enums(enum ct_dir d, enum ct_kind k, enum ct_stat s)
{
	return d + k + s;
}

/* Never called. The enums are only used as constants, which leaves them out
 * of BTF; this signature puts them in, so that bpf2go generates their Go
 * constants and the Go side cannot drift from the values here. The loader
 * ignores an uncalled .text function. */
__attribute__((used)) static int bpf2go_enums(enum direction d, enum verdict v, enum reason r)
{
	return d + v + r;
}

static __always_inline __u32 counter_index(__u32 dir, __u32 verdict, __u32 reason)
{
	return (dir * VERDICT_MAX + verdict) * REASON_MAX + reason;
}

/* count adds one packet of skb->len bytes (the frame from its Ethernet
 * header on). Per-CPU values need no atomics: tc runs with bottom halves
 * disabled, so nothing else on this CPU updates the cell half-way. */
static __always_inline void count_len(__u32 len, enum direction dir, enum verdict verdict, enum reason reason)
{
	__u32 idx = counter_index(dir, verdict, reason);
	struct counter *c = bpf_map_lookup_elem(&counters, &idx);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

static __always_inline void count(struct __sk_buff *skb, enum direction dir, enum verdict verdict, enum reason reason)
{
	count_len(skb->len, dir, verdict, reason);
}

/* tc_done counts a tc program's packet under (dir, verdict of ret, reason)
 * and returns ret, so that every exit is one line and none goes uncounted. */
static __always_inline int tc_done(struct __sk_buff *skb, enum direction dir, int ret, enum reason reason)
{
	enum verdict verdict = VERDICT_DROP;

	if (ret == TC_ACT_OK)
		verdict = VERDICT_PASS;
	else if (ret == TC_ACT_REDIRECT)
		verdict = VERDICT_REDIRECT;
	count(skb, dir, verdict, reason);
	return ret;
}

/* lookup_port finds the published port for (proto, daddr, dport): the exact
 * host address first, then the wildcard entry if daddr is the host's. */
static __always_inline struct port_target *lookup_port(__u8 proto, __be32 daddr, __be16 dport)
{
	struct port_key k = { .host_addr = daddr, .port = dport, .proto = proto };
	struct port_target *t = bpf_map_lookup_elem(&ports, &k);

	if (t)
		return t;
	if (!bpf_map_lookup_elem(&host_addrs, &daddr))
		return 0;
	k.host_addr = 0;
	return bpf_map_lookup_elem(&ports, &k);
}

/* mac_eq compares two MAC addresses without a loop or memcmp, which the
 * BPF backend would not lower for packet pointers. */
static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) |
		(a[3] ^ b[3]) | (a[4] ^ b[4]) | (a[5] ^ b[5])) == 0;
}

static __always_inline int in_subnet(const struct network *net, __be32 addr)
{
	return (addr & net->mask) == net->subnet;
}

static __always_inline void mac_copy(__u8 *dst, const __u8 *src)
{
	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
	dst[4] = src[4];
	dst[5] = src[5];
}

#endif /* FABRIC_H */
