package netns_test

import (
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/fabricnet/fabric/datapath/netns"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

func TestValidName(t *testing.T) {
	for _, ok := range []string{"a", "web-1", "db_2.blue", "A9"} {
		if err := netns.ValidName(ok); err != nil {
			t.Errorf("ValidName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "a/b", "a b", "x\x00", string(make([]byte, 65))} {
		if err := netns.ValidName(bad); err == nil {
			t.Errorf("ValidName(%q) accepted", bad)
		}
	}
}

func TestCreateDoDelete(t *testing.T) {
	netnstest.RequireRoot(t)
	name := netnstest.UniqueName("nst")
	t.Cleanup(func() { netnstest.Remove(name) })
	p, err := netns.CreateNamed(name)
	if err != nil {
		t.Fatal(err)
	}
	id1, err := netns.IDOf(p)
	if err != nil {
		t.Fatal(err)
	}
	// Creating again keeps the same namespace.
	if _, err := netns.CreateNamed(name); err != nil {
		t.Fatal(err)
	}
	if id2, _ := netns.IDOf(p); id2 != id1 {
		t.Fatal("CreateNamed of an existing namespace replaced it")
	}
	self, _ := netns.IDOf("/proc/self/ns/net")
	if id1 == self {
		t.Fatal("the new namespace is the test's own")
	}
	// Do runs inside it (lo is up there), and the caller stays outside.
	var inside netns.ID
	err = netns.Do(p, func() error {
		var err error
		inside, err = netns.IDOf("/proc/thread-self/ns/net")
		return err
	})
	if err != nil || inside != id1 {
		t.Fatalf("Do ran in %v (err %v), want %v", inside, err, id1)
	}
	if now, _ := netns.IDOf("/proc/thread-self/ns/net"); now != self {
		t.Fatal("the calling thread was left in the other namespace")
	}
	out := netnstest.Run(t, name, "ip", "-o", "link", "show", "lo")
	if want := "UP"; !strings.Contains(out, want) {
		t.Fatalf("lo is not up in a new namespace: %s", out)
	}
	if err := netns.DeleteNamed(name); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatalf("%s still exists after DeleteNamed: %v", p, err)
	}
	if err := netns.DeleteNamed(name); err != nil {
		t.Fatalf("deleting a missing namespace: %v", err)
	}
	if netns.IsNamespace(t.TempDir()) {
		t.Fatal("a directory counted as a namespace")
	}
}

// TestInNew: fn runs in a namespace other than the caller's, its error
// comes back, and the caller's thread is where it was afterwards.
func TestInNew(t *testing.T) {
	netnstest.RequireRoot(t)
	self := func() string {
		l, err := os.Readlink("/proc/thread-self/ns/net")
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := self()
	var inside string
	boom := errors.New("from fn")
	err := netns.InNew(func() error {
		inside = self()
		return boom
	})
	if !errors.Is(err, boom) {
		t.Errorf("InNew: %v, want fn's error", err)
	}
	if inside == "" || inside == before {
		t.Errorf("fn ran in %q, the caller is in %q: want a new namespace", inside, before)
	}
	if after := self(); after != before {
		t.Errorf("the caller's thread moved from %s to %s", before, after)
	}
}
