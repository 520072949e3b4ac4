package ebpf

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
)

// ErrUnsupported wraps every reason the eBPF datapath cannot run on this
// host because the kernel lacks something (no BPF, no BTF, a missing
// program type, helper or attach type, no TCX and no clsact, no bpffs):
// "auto" falls back to the kernel datapath on it, and only on it.
var ErrUnsupported = errors.New("eBPF datapath not supported on this host")

// ErrRejected wraps a program of ours that the kernel's verifier refused:
// a bug in fabric's programs, never a reason to fall back quietly to the
// other datapath.
var ErrRejected = errors.New("eBPF program rejected by the verifier")

// verifierTail is how many lines of the verifier's log an ErrRejected
// error carries (the reason is at the end; the whole log can run to
// thousands of lines).
const verifierTail = 12

// loadError is a failure to load or attach programs, classified as
// ErrUnsupported or ErrRejected.
type loadError struct {
	what string
	kind error // ErrUnsupported or ErrRejected
	err  error
	tail []string // of the verifier log, ErrRejected only
}

func (e *loadError) Error() string {
	if e.kind != ErrRejected {
		return fmt.Sprintf("%s: %s: %s", e.kind, e.what, e.err)
	}
	var verr *ebpf.VerifierError
	errors.As(e.err, &verr)
	return fmt.Sprintf("%s: %s: %s\nverifier log (last %d lines):\n  %s",
		e.kind, e.what, firstLine(verr.Error()), len(e.tail), strings.Join(e.tail, "\n  "))
}

func (e *loadError) Unwrap() []error { return []error{e.kind, e.err} }

// unsupported marks err, met while doing what, as something this kernel
// lacks.
func unsupported(what string, err error) error {
	if err == nil {
		return nil
	}
	return &loadError{what: what, kind: ErrUnsupported, err: err}
}

// classifyLoad sorts a program load or attach failure: a verifier error
// that is not about a missing kernel feature is ErrRejected, with the tail
// of the log; everything else is ErrUnsupported. An error that is already
// classified keeps its class.
func classifyLoad(what string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrUnsupported) || errors.Is(err, ErrRejected) {
		return fmt.Errorf("%s: %w", what, err)
	}
	var verr *ebpf.VerifierError
	if !errors.As(err, &verr) || kernelLacks(verr) || errors.Is(err, ebpf.ErrNotSupported) {
		return unsupported(what, err)
	}
	log := verr.Log
	if len(log) > verifierTail {
		log = log[len(log)-verifierTail:]
	}
	return &loadError{what: what, kind: ErrRejected, err: err, tail: log}
}

// kernelLacks reports whether a verifier log says the kernel does not
// know something the program uses (a helper, a kfunc, a BTF type a CO-RE
// relocation needs) rather than that the program is wrong.
func kernelLacks(verr *ebpf.VerifierError) bool {
	for i := len(verr.Log) - 1; i >= 0 && i >= len(verr.Log)-4; i-- {
		l := verr.Log[i]
		for _, s := range []string{"unknown func", "invalid func", "cannot call helper", "unknown kfunc", "calling kernel function", "bad CO-RE relocation"} {
			if strings.Contains(l, s) {
				return true
			}
		}
	}
	return false
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
