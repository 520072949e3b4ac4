// Package bpf will hold fabric's eBPF C programs (tc on endpoint veths and
// the tunnel device, XDP on the uplink) and the Go objects bpf2go generates
// from them. The generated .go and .o files are committed so that `go build`
// needs no clang; `make generate` rebuilds them.
//
// Nothing lives here yet: the foundation runs on the kernel datapath
// (datapath/kernel). The eBPF datapath arrives with its own issue.
package bpf
