package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// udpPayload is the UDP payload of the packet-rate section, in bytes.
const udpPayload = 64

// udpResult is what one iperf3 UDP run reports.
type udpResult struct {
	sentPPS float64 // datagrams/s the client sent
	rcvdPPS float64 // datagrams/s the server received (sent − lost)
	lossPct float64 // the server's lost_percent
}

// parseIperfUDP reads iperf3 -u -J output. The receiver's figures are in
// end.sum_received (iperf3 ≥ 3.12 splits them out) or, from older
// versions, in end.sum, which then holds the server's counts.
func parseIperfUDP(out string) (udpResult, error) {
	if err := checkIperfJSON(out); err != nil {
		return udpResult{}, err
	}
	type sum struct {
		Seconds     float64 `json:"seconds"`
		Packets     float64 `json:"packets"`
		LostPackets float64 `json:"lost_packets"`
		LostPercent float64 `json:"lost_percent"`
	}
	var res struct {
		End struct {
			Sum         *sum `json:"sum"`
			SumSent     *sum `json:"sum_sent"`
			SumReceived *sum `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return udpResult{}, fmt.Errorf("iperf3 output is not JSON: %w", err)
	}
	rcv, snt := res.End.SumReceived, res.End.SumSent
	if rcv == nil {
		rcv = res.End.Sum
	}
	if snt == nil {
		snt = rcv
	}
	if rcv == nil || rcv.Seconds <= 0 || rcv.Packets <= 0 {
		return udpResult{}, fmt.Errorf("iperf3 reported no UDP packets received")
	}
	r := udpResult{
		rcvdPPS: (rcv.Packets - rcv.LostPackets) / rcv.Seconds,
		lossPct: rcv.LostPercent,
	}
	if snt.Seconds > 0 {
		r.sentPPS = snt.Packets / snt.Seconds
	}
	return r, nil
}

// udpRate sends 64-byte UDP datagrams as fast as one iperf3 client can
// from nsPath to the iperf3 server at addr.
func (l *Lab) udpRate(nsPath, addr string) func(context.Context, int) (map[string]float64, error) {
	return func(ctx context.Context, secs int) (map[string]float64, error) {
		out, err := l.iperfJSON(ctx, nsPath, addr, portPerf, secs, "-u", "-l", strconv.Itoa(udpPayload), "-b", "0")
		if err != nil {
			return nil, err
		}
		r, err := parseIperfUDP(out)
		if err != nil {
			return nil, fmt.Errorf("iperf3 -u to %s: %w", addr, err)
		}
		return map[string]float64{"rx": r.rcvdPPS / 1e3, "tx": r.sentPPS / 1e3, "loss": r.lossPct}, nil
	}
}

// sectionUDPPPS: the rate of small UDP packets between two endpoints on
// one host, one sender and one receiver: raw veth (the limit), the kernel
// bridge (the reference), fabric on its eBPF datapath (fa → fb, the agent
// on h1) and fabric on the kernel datapath (ka → kb, the agent on k1).
func (l *Lab) sectionUDPPPS(ctx context.Context) error {
	kh := l.kernelHost(ctx)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	specs := []spec{
		{name: "raw veth h1 → h2 (limit)", fn: l.udpRate(l.nsPath("h1"), h2IP)},
		{name: "kernel bridge c1a → c1b (ref)", fn: l.udpRate(l.nsPath("c1a"), c1bIP)},
		{name: "fabric " + l.datapathName(ctx) + " fa → fb (h1)", skip: l.fabricSkip()},
		{name: "fabric " + kh.datapathLabel() + " ka → kb (k1)", skip: kh.skip()},
	}
	if specs[2].skip == "" {
		specs[2].fn = l.udpRate(l.faNS, l.fbIP)
	}
	if specs[3].skip == "" {
		specs[3].fn = l.udpRate(kh.kaNS, kh.kbIP)
	}
	res := runAlternating(ctx, "udp-pps", l.secs(), l.o.reps, specs)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	raw, br := res[0], res[1]
	printTable(fmt.Sprintf("udp-pps: %d-byte UDP datagrams/s, one sender, one receiver (iperf3 -u -l %d -b 0), %d s, median of %d",
		udpPayload, udpPayload, l.secs(), l.o.reps),
		l.withRange([]column{
			valCol("received kpps", "rx", "%.0f"),
			ratioCol("× bridge", "rx", br),
			ratioCol("× raw", "rx", raw),
			valCol("sent kpps", "tx", "%.0f"),
			valCol("loss %", "loss", "%.1f"),
		}, rangeCol("received kpps min–max", "rx", "%.0f")), res,
		fmt.Sprintf("received = datagrams the iperf3 server counted (sent − lost) per second; %d bytes of UDP payload (%d-byte IPv4 packets).", udpPayload, udpPayload+28),
		"ratios > 1 are faster. The sender runs flat out (-b 0), so loss is the receiver (or the path) not keeping up, not a fault.",
		"the kernel-datapath row runs on its own host namespace k1 (a second fabricd with --datapath kernel), like fa → fb on h1.")
	return nil
}

// datapathName is the datapath the h1 agent reports ("ebpf", or "kernel"
// when -fabricd-flags chose it or eBPF fell back), "?" if unknown.
func (l *Lab) datapathName(ctx context.Context) string {
	if l.client == nil {
		return "?"
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := l.client.Status(sctx)
	if err != nil || st.Datapath == "" {
		return "?"
	}
	return prettyDatapath(st.Datapath)
}

// prettyDatapath spells a datapath name for a row label.
func prettyDatapath(dp string) string {
	if dp == "ebpf" {
		return "eBPF"
	}
	return dp
}

// datapathLabel is the datapath k1's agent reports ("kernel").
func (kh *kernelHost) datapathLabel() string {
	if kh.datapath == "" {
		return "kernel"
	}
	return prettyDatapath(kh.datapath)
}
