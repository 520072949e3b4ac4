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

.PHONY: all build test test-unit fuzz fuzz deps deps-bench deps-bpf deps-docker install-docker generate check-generate demo demo-host bench lint fmt vet staticcheck clean install uninstall

all: build

# Static binaries (no cgo): nothing to resolve at exec, which takes a few
# milliseconds off every fabricctl command on this kind of VM.
build:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/fabricd ./cmd/fabricctl

# deps installs the Debian tools the tests need (idempotent, quiet when all
# are present).
deps:
	@./.ci/apt-ensure $(DEB_TOOLS)

deps-bench: deps
	@./.ci/apt-ensure $(DEB_BENCH)

deps-bpf:
	@./.ci/apt-ensure $(DEB_BPF)

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
# in network namespaces (they skip with a message when not root).
test: deps
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout 12m $(PKGS)

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
bench: deps-bench build
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
install: build
	install -D -m 0755 $(BIN)/fabricd $(DESTDIR)$(PREFIX)/bin/fabricd
	install -D -m 0755 $(BIN)/fabricctl $(DESTDIR)$(PREFIX)/bin/fabricctl
	install -D -m 0644 deploy/fabricd.service $(DESTDIR)$(UNITDIR)/fabricd.service
	sed -i 's#/usr/local/bin/fabricd#$(PREFIX)/bin/fabricd#' $(DESTDIR)$(UNITDIR)/fabricd.service
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/fabric/README.md
	test -e $(DESTDIR)/etc/fabric/fabric.yaml || install -D -m 0644 deploy/fabric.yaml $(DESTDIR)/etc/fabric/fabric.yaml
	-[ -z "$(DESTDIR)" ] && systemctl daemon-reload 2>/dev/null || true

# install-docker adds the drop-in that makes fabricd Docker's network plugin
# (started before docker.service); uninstall removes it too.
install-docker: install
	install -D -m 0644 deploy/fabricd-docker.conf $(DESTDIR)$(UNITDIR)/fabricd.service.d/docker.conf
	-[ -z "$(DESTDIR)" ] && systemctl daemon-reload 2>/dev/null || true

# uninstall removes what install put there. The config is removed only if
# it is still the unmodified example; the agent's state (/var/lib/fabric)
# is kept so a reinstall finds its networks again.
uninstall:
	-[ -z "$(DESTDIR)" ] && systemctl disable --now fabricd 2>/dev/null || true
	rm -f $(DESTDIR)$(PREFIX)/bin/fabricd $(DESTDIR)$(PREFIX)/bin/fabricctl $(DESTDIR)$(UNITDIR)/fabricd.service
	rm -f $(DESTDIR)$(UNITDIR)/fabricd.service.d/docker.conf
	-rmdir $(DESTDIR)$(UNITDIR)/fabricd.service.d 2>/dev/null || true
	rm -rf $(DESTDIR)$(PREFIX)/share/doc/fabric
	cmp -s deploy/fabric.yaml $(DESTDIR)/etc/fabric/fabric.yaml && rm -f $(DESTDIR)/etc/fabric/fabric.yaml || true
	-rmdir $(DESTDIR)/etc/fabric 2>/dev/null || true
	-[ -z "$(DESTDIR)" ] && systemctl daemon-reload 2>/dev/null || true
