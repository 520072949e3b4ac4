package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// testNames are the sandbox names this run's tests made (sandboxName).
var testNames struct {
	sync.Mutex
	names []string
}

// TestMain fails the package if its tests left a namespace or an
// /etc/netns entry of one of their sandboxes behind (`make test` twice
// must find a clean machine).
func TestMain(m *testing.M) {
	code := m.Run()
	var left []string
	for _, name := range testNames.names {
		for _, p := range []string{netns.Path(name), filepath.Join(netns.EtcDir, name)} {
			if _, err := os.Lstat(p); err == nil {
				left = append(left, p)
			}
		}
	}
	if len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: tests left sandbox files behind: %v\n", left)
		code = 1
	}
	os.Exit(code)
}

// sandboxName is a unique sandbox name for a test; its namespace and its
// /etc/netns entry (which the agent writes for the embedded DNS) are
// removed when the test ends, whatever the agent did with them.
func sandboxName(t *testing.T, prefix string) string {
	name := netnstest.UniqueName(prefix)
	testNames.Lock()
	testNames.names = append(testNames.names, name)
	testNames.Unlock()
	t.Cleanup(func() {
		netnstest.Remove(name)
		_ = os.RemoveAll(filepath.Join(netns.EtcDir, name))
	})
	return name
}
