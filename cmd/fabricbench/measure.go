package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// iperf runs one iperf3 TCP stream from the namespace at nsPath to
// addr:port for -t seconds and returns the receiver's rate in Gbit/s
// (end.sum_received.bits_per_second).
func (l *Lab) iperf(ctx context.Context, nsPath, addr string, port, secs int) (float64, error) {
	r, err := l.iperfRun(ctx, nsPath, addr, port, secs)
	return r.gbps, err
}

// iperfResult is what one iperf3 client run reports.
type iperfResult struct {
	gbps        float64 // receiver's rate
	retransmits float64 // sender's TCP retransmits (end.sum_sent.retransmits)
}

// iperfRun is iperf with the sender's retransmits too.
func (l *Lab) iperfRun(ctx context.Context, nsPath, addr string, port, secs int) (iperfResult, error) {
	out, err := l.iperfJSON(ctx, nsPath, addr, port, secs)
	if err != nil {
		return iperfResult{}, err
	}
	r, err := parseIperf(out)
	if err != nil {
		return iperfResult{}, err
	}
	if r.gbps <= 0 {
		return iperfResult{}, fmt.Errorf("iperf3 to %s:%d reported no data", addr, port)
	}
	return r, nil
}

// iperfJSON runs one iperf3 client (-J, plus extra flags) from nsPath to
// addr:port for secs seconds and returns its JSON report, which holds no
// "error". A busy server (the previous test still finishing) or a run
// that printed no JSON is retried a few times.
func (l *Lab) iperfJSON(ctx context.Context, nsPath, addr string, port, secs int, extra ...string) (string, error) {
	limit := time.Duration(secs+20) * time.Second
	args := append([]string{"--net=" + nsPath, "iperf3", "-c", addr, "-p", strconv.Itoa(port),
		"-t", strconv.Itoa(secs), "-J", "--connect-timeout", "3000"}, extra...)
	var lastErr error
	for attempt := 0; attempt < 4; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return "", ctx.Err()
			case <-time.After(time.Duration(attempt) * 500 * time.Millisecond):
			}
		}
		out, err := runCmd(ctx, limit, "nsenter", args...)
		perr := checkIperfJSON(out)
		var busy *iperfError
		switch {
		case errors.As(perr, &busy):
			lastErr = fmt.Errorf("iperf3 to %s:%d: %w", addr, port, perr)
			if busy.busy() {
				continue
			}
			return "", lastErr
		case perr != nil && err == nil:
			lastErr = perr
			continue
		case err != nil:
			lastErr = err
			if perr != nil {
				continue // no JSON: the tool itself failed; try again
			}
			return "", err
		}
		return out, nil
	}
	return "", lastErr
}

// checkIperfJSON says whether out is an iperf3 -J report without an
// "error" (nil), one with an error (*iperfError), or not JSON at all.
func checkIperfJSON(out string) error {
	var res struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return fmt.Errorf("iperf3 output is not JSON: %w", err)
	}
	if res.Error != "" {
		return &iperfError{res.Error}
	}
	return nil
}

// iperfError is the "error" iperf3 -J reports.
type iperfError struct{ msg string }

func (e *iperfError) Error() string { return e.msg }
func (e *iperfError) busy() bool    { return strings.Contains(e.msg, "busy") }

// parseIperf reads iperf3 -J output: the receiver's rate in Gbit/s and the
// sender's retransmits. An "error" in the JSON is an *iperfError.
func parseIperf(out string) (iperfResult, error) {
	var res struct {
		Error string `json:"error"`
		End   struct {
			SumSent struct {
				Retransmits float64 `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return iperfResult{}, fmt.Errorf("iperf3 output is not JSON: %w", err)
	}
	if res.Error != "" {
		return iperfResult{}, &iperfError{res.Error}
	}
	return iperfResult{gbps: res.End.SumReceived.BitsPerSecond / 1e9, retransmits: res.End.SumSent.Retransmits}, nil
}

// sockperfLat runs a sockperf TCP ping-pong from nsPath to addr:port and
// returns p50 and p99 of the one-way latency sockperf reports (half the
// round trip), in µs.
func (l *Lab) sockperfLat(ctx context.Context, nsPath, addr string, port, secs int) (p50, p99 float64, err error) {
	limit := time.Duration(secs+20) * time.Second
	out, err := runCmd(ctx, limit, "nsenter", "--net="+nsPath, "sockperf", "ping-pong", "--tcp",
		"-i", addr, "-p", strconv.Itoa(port), "-t", strconv.Itoa(secs))
	if err != nil {
		return 0, 0, err
	}
	return parseSockperf(out)
}

// parseSockperf reads "sockperf: ---> percentile 50.000 =   12.345" lines.
func parseSockperf(out string) (p50, p99 float64, err error) {
	got := 0
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		var dst *float64
		switch {
		case strings.Contains(line, "percentile 50.000"):
			dst = &p50
		case strings.Contains(line, "percentile 99.000"):
			dst = &p99
		default:
			continue
		}
		f := strings.Fields(line)
		v, perr := strconv.ParseFloat(f[len(f)-1], 64)
		if perr != nil {
			return 0, 0, fmt.Errorf("sockperf: bad line %q", line)
		}
		*dst = v
		got++
	}
	if got < 2 {
		return 0, 0, fmt.Errorf("sockperf printed no percentiles: %s", lastLines(out, 3))
	}
	return p50, p99, nil
}

// wrkResult is what one wrk run reports.
type wrkResult struct {
	rps    float64
	errors string // socket errors / non-2xx summary, "" when clean
}

// wrk opens new connections as fast as it can (one request per connection,
// "Connection: close") from nsPath to url for -t seconds.
func (l *Lab) wrk(ctx context.Context, nsPath, url string, secs int) (wrkResult, error) {
	limit := time.Duration(secs+20) * time.Second
	out, err := runCmd(ctx, limit, "nsenter", "--net="+nsPath, "wrk", "-t1", "-c8",
		"-d", strconv.Itoa(secs)+"s", "--timeout", "2s", "-H", "Connection: close", url)
	if err != nil {
		return wrkResult{}, err
	}
	return parseWrk(out)
}

func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	found := false
	var errs []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "Requests/sec:"):
			v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, "Requests/sec:")), 64)
			if err != nil {
				return r, fmt.Errorf("wrk: bad line %q: %w", line, err)
			}
			r.rps, found = v, true
		case strings.HasPrefix(line, "Socket errors:"), strings.HasPrefix(line, "Non-2xx"):
			errs = append(errs, line)
		}
	}
	if !found {
		return r, fmt.Errorf("wrk printed no Requests/sec: %s", lastLines(out, 3))
	}
	r.errors = strings.Join(errs, "; ")
	return r, nil
}
