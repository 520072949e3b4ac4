//go:build linux

package bpf

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/cilium/ebpf"
)

// The counter index space, as in fabric.h (DIRECTION_MAX, VERDICT_MAX,
// REASON_MAX). Load checks the map against countersMax.
const (
	directionMax = 8
	verdictMax   = 4
	reasonMax    = 64
	countersMax  = directionMax * verdictMax * reasonMax
)

// Direction says where a packet was seen.
type Direction uint32

// Verdict says what a program did with a packet.
type Verdict uint32

// Reason says why. Values are stable; names are used as metric labels.
type Reason uint32

// The values come from the C enums through bpf2go, so they cannot drift.
const (
	DirFromEndpoint = Direction(endpointDirectionDIR_FROM_ENDPOINT)
	DirFromUplink   = Direction(endpointDirectionDIR_FROM_UPLINK)
	DirToUplink     = Direction(endpointDirectionDIR_TO_UPLINK)
	DirXDPUplink    = Direction(endpointDirectionDIR_XDP_UPLINK)
	DirSocket       = Direction(endpointDirectionDIR_SOCKET)
	DirFromTunnel   = Direction(endpointDirectionDIR_FROM_TUNNEL)
	DirToEndpoint   = Direction(endpointDirectionDIR_TO_ENDPOINT)

	VerdictPass     = Verdict(endpointVerdictVERDICT_PASS)
	VerdictDrop     = Verdict(endpointVerdictVERDICT_DROP)
	VerdictRedirect = Verdict(endpointVerdictVERDICT_REDIRECT)

	ReasonForward        = Reason(endpointReasonREASON_FORWARD)
	ReasonARPReply       = Reason(endpointReasonREASON_ARP_REPLY)
	ReasonToHost         = Reason(endpointReasonREASON_TO_HOST)
	ReasonARPToHost      = Reason(endpointReasonREASON_ARP_TO_HOST)
	ReasonNoEndpoint     = Reason(endpointReasonREASON_NO_ENDPOINT)
	ReasonNoNetwork      = Reason(endpointReasonREASON_NO_NETWORK)
	ReasonMalformed      = Reason(endpointReasonREASON_MALFORMED)
	ReasonSpoofedMAC     = Reason(endpointReasonREASON_SPOOFED_MAC)
	ReasonSpoofedIP      = Reason(endpointReasonREASON_SPOOFED_IP)
	ReasonCrossNetwork   = Reason(endpointReasonREASON_CROSS_NETWORK)
	ReasonARPIgnored     = Reason(endpointReasonREASON_ARP_IGNORED)
	ReasonUnsupportedL3  = Reason(endpointReasonREASON_UNSUPPORTED_L3)
	ReasonVLAN           = Reason(endpointReasonREASON_VLAN)
	ReasonSNAT           = Reason(endpointReasonREASON_SNAT)
	ReasonSNATReply      = Reason(endpointReasonREASON_SNAT_REPLY)
	ReasonDNAT           = Reason(endpointReasonREASON_DNAT)
	ReasonDNATReply      = Reason(endpointReasonREASON_DNAT_REPLY)
	ReasonHairpin        = Reason(endpointReasonREASON_HAIRPIN)
	ReasonNATExhausted   = Reason(endpointReasonREASON_NAT_EXHAUSTED)
	ReasonCTFull         = Reason(endpointReasonREASON_CT_FULL)
	ReasonNoOwner        = Reason(endpointReasonREASON_NO_OWNER)
	ReasonFragment       = Reason(endpointReasonREASON_FRAGMENT)
	ReasonSockRewrite    = Reason(endpointReasonREASON_SOCK_REWRITE)
	ReasonInternal       = Reason(endpointReasonREASON_INTERNAL)
	ReasonNotNAT         = Reason(endpointReasonREASON_NOT_NAT)
	ReasonNATUnsupported = Reason(endpointReasonREASON_NAT_UNSUPPORTED)
	ReasonSockReply      = Reason(endpointReasonREASON_SOCK_REPLY)
	ReasonToTunnel       = Reason(endpointReasonREASON_TO_TUNNEL)
	ReasonNoRemote       = Reason(endpointReasonREASON_NO_REMOTE)
	ReasonWrongVNI       = Reason(endpointReasonREASON_WRONG_VNI)
	ReasonNoTunnel       = Reason(endpointReasonREASON_NO_TUNNEL)
	ReasonHostPort       = Reason(endpointReasonREASON_HOST_PORT)
	ReasonTunnelSource   = Reason(endpointReasonREASON_TUNNEL_SOURCE)
	ReasonCTQuota        = Reason(endpointReasonREASON_CT_QUOTA)
)

var directionNames = map[Direction]string{
	DirFromEndpoint: "from-endpoint",
	DirFromUplink:   "from-uplink",
	DirToUplink:     "to-uplink",
	DirXDPUplink:    "xdp-uplink",
	DirSocket:       "socket",
	DirFromTunnel:   "from-tunnel",
	DirToEndpoint:   "to-endpoint",
}

var verdictNames = map[Verdict]string{VerdictPass: "pass", VerdictDrop: "drop", VerdictRedirect: "redirect"}

var reasonNames = map[Reason]string{
	ReasonForward:        "forward",
	ReasonARPReply:       "arp-reply",
	ReasonToHost:         "to-host",
	ReasonARPToHost:      "arp-to-host",
	ReasonNoEndpoint:     "no-endpoint",
	ReasonNoNetwork:      "no-network",
	ReasonMalformed:      "malformed",
	ReasonSpoofedMAC:     "spoofed-mac",
	ReasonSpoofedIP:      "spoofed-ip",
	ReasonCrossNetwork:   "cross-network",
	ReasonARPIgnored:     "arp-ignored",
	ReasonUnsupportedL3:  "unsupported-l3",
	ReasonVLAN:           "vlan",
	ReasonSNAT:           "snat",
	ReasonSNATReply:      "snat-reply",
	ReasonDNAT:           "dnat",
	ReasonDNATReply:      "dnat-reply",
	ReasonHairpin:        "hairpin",
	ReasonNATExhausted:   "nat-exhausted",
	ReasonCTFull:         "ct-full",
	ReasonNoOwner:        "no-owner",
	ReasonFragment:       "fragment",
	ReasonSockRewrite:    "sock-rewrite",
	ReasonInternal:       "internal",
	ReasonNotNAT:         "not-nat",
	ReasonNATUnsupported: "nat-unsupported",
	ReasonSockReply:      "sock-reply",
	ReasonToTunnel:       "to-tunnel",
	ReasonNoRemote:       "no-remote",
	ReasonWrongVNI:       "wrong-vni",
	ReasonNoTunnel:       "no-tunnel",
	ReasonHostPort:       "host-port",
	ReasonTunnelSource:   "tunnel-source",
	ReasonCTQuota:        "ct-quota",
}

func name[T ~uint32](names map[T]string, v T) string {
	if s, ok := names[v]; ok {
		return s
	}
	return strconv.FormatUint(uint64(v), 10)
}

func (d Direction) String() string { return name(directionNames, d) }
func (v Verdict) String() string   { return name(verdictNames, v) }
func (r Reason) String() string    { return name(reasonNames, r) }

// CounterKey is one cell of the counters map.
type CounterKey struct {
	Direction Direction
	Verdict   Verdict
	Reason    Reason
}

func (k CounterKey) String() string { return fmt.Sprintf("%s/%s/%s", k.Direction, k.Verdict, k.Reason) }

func (k CounterKey) index() uint32 {
	return (uint32(k.Direction)*verdictMax+uint32(k.Verdict))*reasonMax + uint32(k.Reason)
}

func counterKeyAt(idx uint32) CounterKey {
	return CounterKey{
		Direction: Direction(idx / (verdictMax * reasonMax)),
		Verdict:   Verdict(idx / reasonMax % verdictMax),
		Reason:    Reason(idx % reasonMax),
	}
}

// Counter is a packet and byte count, summed over CPUs.
type Counter struct {
	Packets uint64
	Bytes   uint64
}

// ReadCounters returns every non-zero counter, summed over CPUs. The values
// only grow; rates are the caller's business. One batch syscall reads the
// whole map where the kernel has batches (a scrape, or a test checking
// counters around every packet, would otherwise make one per cell).
func (o *Objects) ReadCounters() (map[CounterKey]Counter, error) {
	out, err := o.readCountersBatch()
	if err == nil {
		return out, nil
	}
	if !errors.Is(err, ebpf.ErrNotSupported) {
		return nil, fmt.Errorf("read counters: %w", err)
	}
	out = make(map[CounterKey]Counter)
	err = eachEntry(o.objs.Counters, func(idx uint32, perCPU []endpointCounter) {
		if sum := sumCPUs(perCPU); sum != (Counter{}) {
			out[counterKeyAt(idx)] = sum
		}
	})
	if err != nil {
		return nil, fmt.Errorf("read counters: %w", err)
	}
	return out, nil
}

func (o *Objects) readCountersBatch() (map[CounterKey]Counter, error) {
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, err
	}
	keys := make([]uint32, countersMax)
	vals := make([]endpointCounter, countersMax*ncpu)
	var cursor ebpf.MapBatchCursor
	n, err := o.objs.Counters.BatchLookup(&cursor, keys, vals, nil)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, err
	}
	out := make(map[CounterKey]Counter)
	for i := range n {
		if sum := sumCPUs(vals[i*ncpu : (i+1)*ncpu]); sum != (Counter{}) {
			out[counterKeyAt(keys[i])] = sum
		}
	}
	return out, nil
}

// sumCPUs adds up one counter's per-CPU cells.
func sumCPUs(perCPU []endpointCounter) Counter {
	var sum Counter
	for _, c := range perCPU {
		sum.Packets += c.Packets
		sum.Bytes += c.Bytes
	}
	return sum
}
