package agent

import (
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/agent/agentstate"
	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/store"
	"github.com/fabricnet/fabric/datapath/netns"
)

// What the agent writes is what agentstate (the lab's `down`) reads: the
// namespaces the agent made, and not the ones wired in by path or shared.
func TestAgentStateReadsTheAgentsRecords(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, agentstate.FileName), []string{bucketNetworks, bucketSandboxes, bucketEndpoints}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	recs := []sandboxRec{
		{Name: "web", Mode: api.ModeNetNS, NetNS: netns.Path("fb-web"), PID: 42, Phase: phaseReady},
		{Name: "quiet", Mode: api.ModeNone, NetNS: netns.Path("fb-quiet"), Phase: phaseCreating},
		{Name: "ext", Mode: api.ModeExternal, NetNS: filepath.Join(dir, "netns", "ext"), Origin: "/run/other/ns"},
		{Name: "side", Mode: api.ModeContainer, NetNS: netns.Path("fb-web"), Container: "web"},
		{Name: "h", Mode: api.ModeHost},
	}
	err = st.Update(func(tx *store.Tx) error {
		for _, r := range recs {
			if err := tx.Put(bucketSandboxes, r.Name, r); err != nil {
				return err
			}
		}
		return nil
	})
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	got, err := agentstate.MadeNamespaces(dir)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if want := []string{"fb-quiet", "fb-web"}; !slices.Equal(got, want) {
		t.Fatalf("namespaces the agent made: %v, want %v", got, want)
	}
	if got, err := agentstate.MadeNamespaces(t.TempDir()); err != nil || got != nil {
		t.Fatalf("no state file: %v, %v; want nothing", got, err)
	}
}
