# fabric — build, test, demo and benchmark targets. Everything that needs
# root (tests in network namespaces, the demo, benchmarks) runs as root.
GO       ?= go
BIN      := bin
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
PKGS     := ./...
# Debian packages the tests, demo and benchmarks use; `make deps` installs
# whichever are missing.
DEB_TOOLS := iproute2:ip nftables:nft util-linux:nsenter iputils-ping:ping python3:python3 prometheus:promtool
DEB_BENCH := iperf3:iperf3 sockperf:sockperf wrk:wrk docker.io:docker-proxy containerd:containerd busybox-static:/bin/busybox
# What `make generate` needs to compile the eBPF programs.
DEB_BPF   := clang:clang llvm:llvm-strip libbpf-dev:/usr/include/bpf/bpf_helpers.h
# What the Docker plugin's tests use: Debian's Docker (20.10), its
# containerd and runc, and a static busybox to make an image offline.
DEB_DOCKER := docker.io:dockerd containerd:containerd runc:runc busybox-static:/bin/busybox curl:curl
# What the CNI tests run: Debian's reference plugins (bridge, host-local,
# portmap, tuning, bandwidth in /usr/lib/cni), containerd with its CRI
# plugin and runc, podman with its CNI backend; crictl from its module.
DEB_CNI   := containernetworking-plugins:/usr/lib/cni/bridge containerd:containerd runc:runc podman:podman
CRICTL_VERSION ?= v1.34.0
NERDCTL_VERSION ?= v1.7.7
TOOLBIN   ?= /usr/local/bin

.PHONY: all build test test-unit fuzz test-kernels deps deps-bench deps-bpf deps-kernels deps-cni deps-nerdctl deps-docker install-docker generate check-generate demo demo-host bench lint fmt vet staticcheck clean install uninstall

all: build

# Static binaries (no cgo): nothing to resolve at exec, which takes a few
# milliseconds off every fabricctl command on this kind of VM.
build:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/fabricd ./cmd/fabricctl ./cmd/fabric-cni

# deps installs the Debian tools the tests need (idempotent, quiet when all
# are present).
deps:
	@./.ci/apt-ensure $(DEB_TOOLS)

deps-bench: deps
	@./.ci/apt-ensure $(DEB_BENCH)

deps-bpf:
	@./.ci/apt-ensure $(DEB_BPF)

# deps-kernels installs qemu, busybox-static and the kernels of the test
# matrix (the list is cmd/internal/vmtest.Matrix). Only their files in /boot
# and /lib/modules are used; this machine keeps booting its own kernel.
deps-kernels:
	@./.ci/apt-ensure $$($(GO) run ./cmd/internal/vmtest/cmd -list-packages)

# deps-cni installs what the CNI end-to-end tests drive (they skip with a
# message when a tool is missing): Debian's plugins, containerd, runc,
# podman, and crictl built from sigs.k8s.io/cri-tools.
deps-cni: deps
	@./.ci/apt-ensure $(DEB_CNI)
	@command -v crictl >/dev/null 2>&1 || GOBIN=$(TOOLBIN) $(GO) install sigs.k8s.io/cri-tools/cmd/crictl@$(CRICTL_VERSION)

# deps-nerdctl builds nerdctl (for its CNI test, which skips without it).
# Its module builds only by exact version from a module that requires it,
# and takes minutes: not part of deps-cni.
deps-nerdctl: deps-cni
	@command -v nerdctl >/dev/null 2>&1 || { d=$$(mktemp -d) && cd $$d && \
	  $(GO) mod init fabric-nerdctl-build >/dev/null 2>&1 && \
	  $(GO) get github.com/containerd/nerdctl/cmd/nerdctl@$(NERDCTL_VERSION) && \
	  CGO_ENABLED=0 GOBIN=$(TOOLBIN) $(GO) install github.com/containerd/nerdctl/cmd/nerdctl; rc=$$?; rm -rf $$d; exit $$rc; }

# deps-docker installs Docker for the Docker plugin's end-to-end tests (they
# skip with a message without it).
deps-docker: deps
	@./.ci/apt-ensure $(DEB_DOCKER)

# generate rebuilds the eBPF objects and their Go bindings (bpf2go). The
# results are committed, so building fabric needs no clang.
generate: deps-bpf
	$(GO) generate ./bpf/...

# check-generate fails if the committed eBPF objects are not what the
# sources compile to (CI runs it).
check-generate: generate
	@if [ -n "$$(git status --porcelain -- bpf/)" ]; then git status --short -- bpf/; \
	  echo "bpf/: committed eBPF objects differ from what the sources compile to: run make generate and commit"; exit 1; fi

# test runs the whole suite: unit tests and, as root, the integration tests
# in network namespaces (they skip with a message when not root), and the
# CNI runtime tests (containerd/crictl, podman: deps-cni).
test: deps deps-cni deps-docker
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout 12m $(PKGS)

# test-kernels boots each kernel of the matrix (Debian's 6.1 and 6.12) in a
# qemu VM and runs, as root inside, the tests whose outcome depends on the
# kernel: eBPF programs and datapath (TCX or clsact), kernel datapath
# (macvlan, ipvlan, VLAN), the agent's macvlan/ipvlan/VLAN tests. It prints
# per kernel what passed, failed and skipped, and the wall time.
# VMTEST_FLAGS=-kernels=6.1 -run=TestX narrows it.
test-kernels: deps deps-kernels
	$(GO) run ./cmd/internal/vmtest/cmd $(VMTEST_FLAGS)

test-unit:
	$(GO) test -count=1 -short $(PKGS)

# fuzz runs every Fuzz function of the repository (found in the *_test.go
# files) for FUZZTIME each, seed corpus first; bounded, for CI.
FUZZTIME ?= 10s
fuzz:
	@set -e; for f in $$(git grep -l '^func Fuzz' -- '*_test.go'); do \
	  dir=./$$(dirname $$f); \
	  for fn in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
	    echo "== fuzz $$fn in $$dir for $(FUZZTIME)"; \
	    $(GO) test -run='^$$' -fuzz="^$$fn$$" -fuzztime=$(FUZZTIME) $$dir; \
	  done; \
	done

# demo builds fabric, brings up a 3-host lab (namespaces, one fabricd each,
# one cluster), and shows sandboxes on an overlay network talking across
# hosts. demo-host is the single-host tour: networks, isolation, ports, DNS.
demo: deps build
	./deploy/demo-cluster.sh

demo-host: deps build
	./deploy/demo.sh

# bench measures fabric against the kernel baseline, Docker's userland proxy
# and raw veth in one run (medians of alternating repetitions).
bench: deps-bench deps-cni build
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./cmd/fabricbench
	$(BIN)/fabricbench -bin $(BIN)

lint: vet staticcheck
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }

vet:
	$(GO) vet $(PKGS)

staticcheck:
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BIN)

# install puts the binaries, the systemd unit and the example config in
# place (an existing /etc/fabric/fabric.yaml is kept). PREFIX and DESTDIR
# work as usual. Then: systemctl enable --now fabricd
PREFIX  ?= /usr/local
UNITDIR ?= /etc/systemd/system
# CNI runtimes look for plugins here; the example conflist goes with the
# docs (copy it to /etc/cni/net.d to use it).
CNIBINDIR ?= /opt/cni/bin
install: build
	install -D -m 0755 $(BIN)/fabricd $(DESTDIR)$(PREFIX)/bin/fabricd
	install -D -m 0755 $(BIN)/fabricctl $(DESTDIR)$(PREFIX)/bin/fabricctl
	install -D -m 0755 $(BIN)/fabric-cni $(DESTDIR)$(CNIBINDIR)/fabric-cni
	install -D -m 0644 deploy/cni/10-fabric.conflist $(DESTDIR)$(PREFIX)/share/doc/fabric/cni/10-fabric.conflist
	install -D -m 0644 deploy/fabricd.service $(DESTDIR)$(UNITDIR)/fabricd.service
	sed -i -e 's#/usr/local/bin/fabricd#$(PREFIX)/bin/fabricd#' \
	    -e 's#/usr/local/share/doc/fabric#$(PREFIX)/share/doc/fabric#' $(DESTDIR)$(UNITDIR)/fabricd.service
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/fabric/README.md
	test -e $(DESTDIR)/etc/fabric/fabric.yaml || install -D -m 0644 deploy/fabric.yaml $(DESTDIR)/etc/fabric/fabric.yaml
	-[ -z "$(DESTDIR)" ] && systemctl daemon-reload 2>/dev/null || true

# install-docker adds the drop-in that makes fabricd Docker's network plugin
# (started before docker.service); uninstall removes it too.
install-docker: install
	install -D -m 0644 deploy/fabricd-docker.conf $(DESTDIR)$(UNITDIR)/fabricd.service.d/docker.conf
	-[ -z "$(DESTDIR)" ] && systemctl daemon-reload 2>/dev/null || true

# uninstall stops the agent, removes fabric's kernel state (`fabricd
# reset`: sandboxes' namespaces and commands, links, the nftables table,
# eBPF programs, pins and cgroup socket hooks), then what install put
# there. The config is removed only if it is still the unmodified example;
# the agent's records (/var/lib/fabric) are kept so a reinstall finds its
# networks again (`fabricd reset --purge-state` before uninstalling removes
# them too).
uninstall:
	-[ -z "$(DESTDIR)" ] && systemctl disable --now fabricd 2>/dev/null || true
	-[ -n "$(DESTDIR)" ] || [ ! -x $(PREFIX)/bin/fabricd ] || $(PREFIX)/bin/fabricd reset
	rm -f $(DESTDIR)$(PREFIX)/bin/fabricd $(DESTDIR)$(PREFIX)/bin/fabricctl $(DESTDIR)$(UNITDIR)/fabricd.service $(DESTDIR)$(CNIBINDIR)/fabric-cni
	rm -f $(DESTDIR)$(UNITDIR)/fabricd.service.d/docker.conf
	-rmdir $(DESTDIR)$(UNITDIR)/fabricd.service.d 2>/dev/null || true
	rm -rf $(DESTDIR)$(PREFIX)/share/doc/fabric
	cmp -s deploy/fabric.yaml $(DESTDIR)/etc/fabric/fabric.yaml && rm -f $(DESTDIR)/etc/fabric/fabric.yaml || true
	-rmdir $(DESTDIR)/etc/fabric 2>/dev/null || true
	-[ -z "$(DESTDIR)" ] && systemctl daemon-reload 2>/dev/null || true
