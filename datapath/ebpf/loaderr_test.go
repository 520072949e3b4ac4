package ebpf

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// TestClassifyLoad: a verifier log about a missing helper or kfunc means
// the kernel lacks something (fall back); any other verifier error is our
// program rejected (no fall back), with the log's tail in the message.
func TestClassifyLoad(t *testing.T) {
	long := make([]string, 40)
	for i := range long {
		long[i] = fmt.Sprintf("%d: (b7) r0 = 0", i)
	}
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"no bpf", unix.EPERM, ErrUnsupported},
		{"not supported", fmt.Errorf("tcx: %w", ebpf.ErrNotSupported), ErrUnsupported},
		{"unknown helper", &ebpf.VerifierError{Cause: unix.EINVAL, Log: []string{"0: (85) call unknown#212", "invalid func unknown#212"}}, ErrUnsupported},
		{"unknown kfunc", &ebpf.VerifierError{Cause: unix.EINVAL, Log: []string{"unknown kfunc bpf_foo"}}, ErrUnsupported},
		{"stack out of bounds", &ebpf.VerifierError{Cause: unix.EACCES, Log: append(long, "invalid read from stack R10 off=8 size=8")}, ErrRejected},
		{"packet access", &ebpf.VerifierError{Cause: unix.EACCES, Log: []string{"invalid access to packet, off=14 size=1"}}, ErrRejected},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := classifyLoad("endpoint programs", fmt.Errorf("load: %w", tc.err))
			other := ErrRejected
			if tc.want == ErrRejected {
				other = ErrUnsupported
			}
			if !errors.Is(err, tc.want) || errors.Is(err, other) {
				t.Fatalf("got %v, want only %v", err, tc.want)
			}
			if !errors.Is(err, tc.err) {
				t.Errorf("the cause is lost: %v", err)
			}
			if tc.want == ErrRejected {
				msg := err.Error()
				if !strings.Contains(msg, "invalid") || strings.Contains(msg, "\n  "+long[0]+"\n") || strings.Count(msg, "\n") > verifierTail+1 {
					t.Errorf("message is not the log's tail:\n%s", msg)
				}
			}
			// Classified once, classified for good.
			if again := classifyLoad("attach", err); !errors.Is(again, tc.want) || errors.Is(again, other) {
				t.Errorf("re-classified: %v", again)
			}
		})
	}
}
