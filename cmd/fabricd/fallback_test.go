package main

import (
	"context"
	"strings"
	"testing"

	"github.com/fabricnet/fabric/datapath"
)

type statusOnly struct{ datapath.Datapath }

func (statusOnly) Status(context.Context) datapath.Status { return datapath.Status{Name: "kernel"} }

// TestFallbackWarningIsOneLine: a verifier rejection's whole log does not
// end up in status; its first line does.
func TestFallbackWarningIsOneLine(t *testing.T) {
	f := fallback{Datapath: statusOnly{}, why: "load uplink: permission denied: invalid access to packet (793 line(s) omitted)\n\t0: R1=ctx(off=0,imm=0) R10=fp0\n\t1: (b7) r1 = 0"}
	st := f.Status(context.Background())
	if len(st.Warnings) != 1 || strings.Contains(st.Warnings[0], "\n") || !strings.HasSuffix(st.Warnings[0], "invalid access to packet (793 line(s) omitted)") {
		t.Errorf("warnings %q", st.Warnings)
	}
}
