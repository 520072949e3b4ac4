package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/fabricnet/fabric/datapath/netns"
)

// tcpCounters are a namespace's TCP MIB counters (what `nstat -az` shows),
// keyed like nstat: "TcpRetransSegs", "TcpExtTCPSACKReorder", …
type tcpCounters map[string]uint64

// readTCPCounters reads /proc/net/snmp and /proc/net/netstat as seen from
// the namespace at nsPath.
func readTCPCounters(nsPath string) (tcpCounters, error) {
	c := tcpCounters{}
	err := netns.Do(nsPath, func() error {
		for _, f := range []string{"/proc/thread-self/net/snmp", "/proc/thread-self/net/netstat"} {
			fh, err := os.Open(f)
			if err != nil {
				return err
			}
			err = parseProcNetStat(fh, c)
			fh.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", f, err)
			}
		}
		return nil
	})
	return c, err
}

// parseProcNetStat reads the header/value line pairs of /proc/net/snmp and
// /proc/net/netstat ("TcpExt: A B" then "TcpExt: 1 2") into c, named as
// nstat does: the table name without its colon, then the field (Tcp +
// RetransSegs = TcpRetransSegs). Only the Tcp and TcpExt tables are kept.
func parseProcNetStat(r io.Reader, c tcpCounters) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var head []string
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || !strings.HasSuffix(f[0], ":") {
			head = nil
			continue
		}
		if head == nil || head[0] != f[0] {
			head = f
			continue
		}
		table := strings.TrimSuffix(f[0], ":")
		if table == "Tcp" || table == "TcpExt" {
			if len(f) != len(head) {
				return fmt.Errorf("table %s: %d names but %d values", table, len(head)-1, len(f)-1)
			}
			for i := 1; i < len(f); i++ {
				// MaxConn is -1 in Tcp: signed fields are not counters.
				if v, err := strconv.ParseUint(f[i], 10, 64); err == nil {
					c[table+head[i]] = v
				}
			}
		}
		head = nil
	}
	return sc.Err()
}

// delta is after - before for counter k (0 when missing or wrapped).
func (after tcpCounters) delta(before tcpCounters, k string) float64 {
	a, b := after[k], before[k]
	if a < b {
		return 0
	}
	return float64(a - b)
}
