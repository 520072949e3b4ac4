package kernel

import (
	"testing"
	"time"

	"github.com/fabricnet/fabric/datapath/datapathtest"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// TestSpoofDropsCounted: datagrams a sandbox forges with its neighbour's
// address are counted in the datapath's metrics as from-endpoint drops
// (reason "spoofed"), as the eBPF datapath counts its spoofed-ip drops;
// its genuine datagrams are not.
func TestSpoofDropsCounted(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	n := l.bridgeNetwork("netc", "br-sc", "10.91.3.0/24", false)
	att := l.join(n, "att", "vcatt", 2)
	vic := l.join(n, "vic", "vcvic", 3)
	sink := newUDPSink(t, vic.path, "10.91.3.3:7001")
	mustPing(t, att.name, "10.91.3.3")
	netnstest.Eventually(t, 5*time.Second, "genuine datagram", func() bool {
		sendUDPFrom(t, att.path, att.ep.Addr.Addr(), "10.91.3.3:7001", "genuine")
		return sink.has("genuine")
	})
	before := datapathtest.Counter(t, l.dp, "from-endpoint", "drop", spoofReason)
	const forged = 5
	for range forged {
		sendUDPFrom(t, att.path, vic.ep.Addr.Addr(), "10.91.3.3:7001", "spoofed")
	}
	if !netnstest.PollEvery(5*time.Second, 50*time.Millisecond, func() bool {
		return datapathtest.Counter(t, l.dp, "from-endpoint", "drop", spoofReason) >= before+forged
	}) {
		t.Fatalf("spoofed drops counted: %d before, %d after %d forged datagrams",
			before, datapathtest.Counter(t, l.dp, "from-endpoint", "drop", spoofReason), forged)
	}
	if sink.has("spoofed") {
		t.Error("the neighbour received a datagram with its own address as source")
	}
}
