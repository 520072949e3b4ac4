// Package bpf holds fabric's eBPF programs and the thin Go layer around them.
//
// The C sources (endpoint.c, uplink.c, sock.c, sharing the map layouts in
// fabric.h; the NAT core of endpoint.c and uplink.c in packet.h, conntrack.h
// and nat.h) are compiled by bpf2go into <name>_bpfel.go and <name>_bpfel.o,
// which are committed so that `go build` needs no clang; `go generate
// ./bpf/...` rebuilds them (clang, llvm-strip and libbpf headers required).
// Every object includes fabric.h's maps; the endpoint object's are the ones
// that exist, and the others are loaded onto them (LoadUplink, LoadSock).
//
// The Go side loads the objects, writes networks and endpoints into the maps
// in the layout the programs expect, and reads the per-CPU counters. It knows
// the map layouts and nothing else: not the agent, the store or the API, and
// not how links, namespaces or attachments are made — datapath/ebpf decides
// where the programs run.
package bpf
