//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	cebpf "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"

	"github.com/fabricnet/fabric/bpf"
	"github.com/fabricnet/fabric/cmd/internal/config"
	"github.com/fabricnet/fabric/datapath/ebpf"
	"github.com/fabricnet/fabric/datapath/kernel"
	"github.com/fabricnet/fabric/datapath/netns/netnstest"
)

// rejectedVariant is the built-in endpoint object with one instruction
// put in front of from_endpoint that reads past the top of the stack:
// the verifier must refuse it.
func rejectedVariant(t *testing.T) *cebpf.CollectionSpec {
	t.Helper()
	spec, err := bpf.EndpointSpec()
	if err != nil {
		t.Fatal(err)
	}
	v := spec.Copy()
	p := v.Programs["from_endpoint"]
	if p == nil || len(p.Instructions) == 0 {
		t.Fatal("the endpoint object has no from_endpoint program")
	}
	first := p.Instructions[0]
	bad := asm.LoadMem(asm.R2, asm.RFP, 8, asm.DWord) // above the frame: out of bounds
	bad = btf.WithFuncMetadata(bad.WithSymbol(first.Symbol()), btf.FuncMetadata(&first)).
		WithSource(asm.Comment("fabricd test: read past the stack"))
	p.Instructions[0] = btf.WithFuncMetadata(first.WithSymbol(""), nil)
	p.Instructions = append(asm.Instructions{bad}, p.Instructions...)
	return v
}

// chooseLab is a host namespace, a bpf root and a logger for
// chooseDatapath.
func chooseLab(t *testing.T) (path, root string, log *slog.Logger, buf *bytes.Buffer) {
	t.Helper()
	netnstest.RequireRoot(t)
	_, path = netnstest.New(t, "fbc")
	root = filepath.Join("/sys/fs/bpf", netnstest.UniqueName("fabric-test-"))
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	buf = &bytes.Buffer{}
	return path, root, slog.New(slog.NewTextHandler(buf, nil)), buf
}

// TestAutoFailsOnVerifierRejection: with --datapath auto, a program of
// ours that the verifier rejects is an error that carries the log's tail,
// not a quiet fall-back to the kernel datapath.
func TestAutoFailsOnVerifierRejection(t *testing.T) {
	path, root, log, buf := chooseLab(t)
	eopts := ebpf.Options{NetNSPath: path, BPFRoot: root, XDP: ebpf.XDPOff, EndpointSpec: rejectedVariant(t)}
	dp, err := chooseDatapath(log, config.DatapathAuto, eopts, kernel.Options{NetNSPath: path})
	if err == nil {
		st := dp.Status(context.Background())
		dp.Close()
		t.Fatalf("auto fell back (status %+v) instead of failing", st)
	}
	if !errors.Is(err, ebpf.ErrRejected) || errors.Is(err, ebpf.ErrUnsupported) {
		t.Errorf("error is not (only) ErrRejected: %v", err)
	}
	var verr *cebpf.VerifierError
	if !errors.As(err, &verr) {
		t.Fatalf("error does not carry the verifier error: %v", err)
	}
	msg := err.Error()
	last := verr.Log[len(verr.Log)-1]
	if !strings.Contains(msg, "verifier log (last") || !strings.Contains(msg, last) {
		t.Errorf("error lacks the verifier log's tail (%q): %s", last, msg)
	}
	if strings.Contains(buf.String(), "falling back") {
		t.Errorf("the log says it falls back:\n%s", buf)
	}
}

// TestAutoFallsBackWhenUnsupported: a bpf root that is not on a bpffs is
// something this host lacks; auto then runs the kernel datapath and says
// why in the log and in status.
func TestAutoFallsBackWhenUnsupported(t *testing.T) {
	path, _, log, buf := chooseLab(t)
	eopts := ebpf.Options{NetNSPath: path, BPFRoot: t.TempDir(), XDP: ebpf.XDPOff}
	dp, err := chooseDatapath(log, config.DatapathAuto, eopts, kernel.Options{NetNSPath: path})
	if err != nil {
		t.Fatalf("auto did not fall back: %v", err)
	}
	defer dp.Close()
	st := dp.Status(context.Background())
	if st.Name != "kernel" || len(st.Warnings) == 0 || !strings.Contains(st.Warnings[len(st.Warnings)-1], "not on a bpf filesystem") {
		t.Errorf("status %+v does not say why eBPF is not used", st)
	}
	if !strings.Contains(buf.String(), "falling back") || !strings.Contains(buf.String(), "not on a bpf filesystem") {
		t.Errorf("the log does not say why it falls back:\n%s", buf)
	}
	if _, err := chooseDatapath(log, config.DatapathEBPF, eopts, kernel.Options{NetNSPath: path}); !errors.Is(err, ebpf.ErrUnsupported) {
		t.Errorf("--datapath ebpf: got %v, want an ErrUnsupported error", err)
	}
}
