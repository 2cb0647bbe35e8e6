# plinth — see README.md. `make demo` and `make test` are the two entry points.

VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# Orders builds for upgrades: a bundle with a lower serial is a downgrade.
SERIAL   ?= $(shell git rev-list --count HEAD 2>/dev/null || echo 0)
OUT      ?= out
CACHE    ?= .cache
GO       ?= go
PKG      := github.com/plinth-os/plinth

# Two static binaries, linked with cgo against musl (libcontainer's nsenter
# is C): plinth (the CLI and the platform's services) and plinth-host (a
# machine's layer 0: /init, netd, hostd, each container's init). musl-gcc
# needs the kernel headers made visible to it.
MUSL_INC := $(CURDIR)/$(CACHE)/musl-include
STATIC   := CGO_ENABLED=1 CC=musl-gcc CGO_CFLAGS=-I$(MUSL_INC)
LDFLAGS  := -s -w -linkmode external -extldflags "-static" -X $(PKG)/version.Version=$(VERSION)
GOSRC    := $(shell find . -name '*.go' -not -path './$(CACHE)/*') go.mod go.sum

export PLINTH_IMAGE_DIR = $(CURDIR)/$(OUT)

.PHONY: all deps binary image image-generic disk check-static demo test test-unit test-vm test-vm-all \
        test-repro bench bench-boot bench-dhcp bench-gossip bench-runtime bench-controller bench-scheduler bench-router bench-platform bench-deploy bench-build bench-upgrade lint clean

all: image

deps:
	@scripts/deps.sh

$(MUSL_INC):
	mkdir -p $@
	ln -sfn /usr/include/linux $@/linux
	ln -sfn /usr/include/x86_64-linux-gnu/asm $@/asm
	ln -sfn /usr/include/asm-generic $@/asm-generic

$(OUT)/plinth: $(GOSRC) | $(MUSL_INC)
	$(STATIC) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/plinth

$(OUT)/plinth-host: $(GOSRC) | $(MUSL_INC)
	$(STATIC) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/plinth-host

binary: deps $(OUT)/plinth $(OUT)/plinth-host check-static

# The binaries must be static: plinth-host runs as /init before any
# library exists, and both run in containers of images without libc.
check-static: $(OUT)/plinth $(OUT)/plinth-host
	@for b in $^; do \
		if ldd $$b >/dev/null 2>&1; then echo "$$b is dynamically linked" >&2; exit 1; fi; \
		echo "$$b: static ($$(du -h $$b | cut -f1))"; \
	done

# Images are signed; a development key is made once under the cache. Set
# SIGN_KEY to your own (`plinth image keygen`) for images you ship.
SIGN_KEY ?= $(CACHE)/signing.key

$(SIGN_KEY): | $(OUT)/plinth
	@mkdir -p $(dir $@)
	$(OUT)/plinth image keygen --out $@

image: binary $(SIGN_KEY)
	$(OUT)/plinth image build --kernel cloud --out $(OUT) --cache $(CACHE)/kernel --host-binary $(OUT)/plinth-host --sign-key $(SIGN_KEY) --serial $(SERIAL)

# The same build on Debian's generic kernel, with the drivers of real
# machines (docs/operator-guide.md, "Supported hardware"). FIRMWARE=DIR
# adds the firmware files those drivers name.
image-generic: binary $(SIGN_KEY)
	$(OUT)/plinth image build --kernel generic --out $(OUT)/generic --cache $(CACHE)/kernel --host-binary $(OUT)/plinth-host --sign-key $(SIGN_KEY) --serial $(SERIAL) $(if $(FIRMWARE),--firmware $(FIRMWARE))

# The installable disk: GPT with an ESP (systemd-boot, boot counting),
# slots A (this build) and B (empty), and the data partition.
disk: image
	$(OUT)/plinth image disk --dir $(OUT) --out $(OUT)/disk.img

# Three VMs with data disks bootstrap the platform by themselves
# (bootstrap_expect): plinth status healthy, an example app pushed to the
# registry and deployed, routed, changed, rolled back and restarted under
# requests, a VM running it killed and its instance run elsewhere, every VM
# killed at once and booted again, the app served once more.
demo: image
	$(OUT)/plinth vm cluster --nodes 3 --kernel $(OUT)/vmlinuz --initrd $(OUT)/initrd.img

test: lint test-unit test-repro test-vm

test-unit: deps
	$(GO) vet ./...
	$(GO) test -count=1 ./...
	$(GO) test -count=1 -run '^$$' -fuzz FuzzDNSRequest -fuzztime 20s ./services/discovery/
	$(GO) test -count=1 -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 20s ./init/config/

# The busybox harness tests boot the pinned kernel from the download cache,
# which exists only once `image` has run, hence the glob in the recipe.
VM_ENV := PLINTH_TEST_KERNEL=$$(ls $(CURDIR)/$(CACHE)/kernel/*-cloud-amd64_*/boot/vmlinuz-* | head -1) \
	PLINTH_GENERIC_IMAGE_DIR=$(CURDIR)/$(OUT)/generic

test-vm: image image-generic
	$(VM_ENV) GO=$(GO) scripts/vmtest.sh $(OUT)/test-vm.log -timeout 30m

# Longer VM suites read PLINTH_VM_ALL: the platform's cold starts run 10
# cycles instead of 3, a git push is built on the VM cluster, and three
# disk-booted VMs are upgraded one at a time under app traffic.
test-vm-all: image image-generic
	$(VM_ENV) GO=$(GO) PLINTH_VM_ALL=1 scripts/vmtest.sh $(OUT)/test-vm-all.log -timeout 90m

# Two builds from the same tree must give identical bytes, binary included.
test-repro: binary
	scripts/repro.sh

bench: bench-boot bench-dhcp bench-gossip bench-runtime bench-controller bench-scheduler bench-router bench-platform bench-deploy bench-build bench-upgrade

# DHCP bind time in network namespaces: netd's client vs busybox udhcpc
# against dnsmasq on the same segment, interleaved rounds.
bench-dhcp: deps
	$(GO) test -count=1 -run '^$$' -bench BenchmarkBind -benchtime 1x -v ./netd/dhcp/

# Serf join convergence and failure detection at 5, 20 and 100 members on
# loopback: hostd's timings vs memberlist's LAN defaults, alternating rounds.
bench-gossip: deps
	$(GO) test -count=1 -run '^$$' -bench BenchmarkGossip -benchtime 1x -timeout 20m ./host/

# Job create→exit through the host API vs Debian's runc run on the same
# rootfs (median of 41 pairs, alternating), hostd being plinth-host, and
# hostd's memory with 100 idle jobs.
bench-runtime: deps $(OUT)/plinth-host
	PLINTH_HOSTD_BINARY=$(CURDIR)/$(OUT)/plinth-host $(GO) test -count=1 -run '^$$' -bench BenchmarkRuntime -benchtime 1x -timeout 10m ./host/

# Three controller voters vs three etcd members on loopback, fsync on:
# writes/s and latency at concurrency 1 and 64, watch delivery on a
# follower, memory with 10,000 settings; alternating rounds.
bench-controller: deps
	$(GO) test -count=1 -run '^$$' -bench BenchmarkController -benchtime 1x -timeout 20m ./services/controller/

# One placement plan for 1,000 hosts and 10,000 instances from nothing,
# and one after 100 of those hosts failed, against 1 s and 100 ms. Only
# the two bench lines are printed, everything when a check fails.
bench-scheduler:
	@out=$$($(GO) test -count=1 -run '^$$' -bench . -benchtime 1x ./services/scheduler/placement/ 2>&1) || { echo "$$out"; exit 1; }; \
	echo "$$out" | grep '^bench '

# One disk-booted VM: its upgrade (bundle received to healthy on the new
# version, committed) against its plain reboot (to healthy again),
# alternating; then the rolling upgrade of three disk-booted VMs under
# app traffic: total time, failed requests, controller voters away.
bench-upgrade: image
	$(VM_ENV) $(GO) test -count=1 -tags vmtest -run '^$$' -bench BenchmarkUpgrade -benchtime 1x -timeout 45m ./vm-tests/
	@$(VM_ENV) PLINTH_VM_ALL=1 $(GO) test -count=1 -tags vmtest -run '^TestRollingUpgrade$$' -v -timeout 60m ./vm-tests/ > $(OUT)/bench-rolling.log 2>&1; rc=$$?; \
	grep -E '^(bench |--- )' $(OUT)/bench-rolling.log; [ $$rc = 0 ] || { tail -50 $(OUT)/bench-rolling.log; exit 1; }

# Three VMs with data disks: power-on to plinth status healthy (60 s
# target), and a VM's SIGKILL to its jobs healthy elsewhere (8 s), with
# each phase's share.
bench-platform: image
	$(VM_ENV) $(GO) test -count=1 -tags vmtest -run '^$$' -bench BenchmarkPlatform -benchtime 1x -timeout 20m ./vm-tests/

# The router against the baselines, each in front of the same backend in
# the same run, alternating rounds, on loopback:
# - HTTP/1.1 keep-alive vs nginx (worker_processes auto, upstream
#   keep-alive, the same forwarding headers, with access logs off for both, then on for both):
#   wrk -t1 -c50, req/s and p99;
# - TCP vs HAProxy in TCP mode (splice, keepalive both sides): bulk MB/s,
#   connect latency and rate, CPU per GiB and per connection, and that the
#   relay splices (strace);
# - UDP echo datagrams/s through the router vs direct.
bench-router: deps
	@scripts/deps.sh nginx-light haproxy wrk strace
	$(GO) test -count=1 -run '^$$' -bench BenchmarkHTTPvsNginx -benchtime 1x -timeout 10m ./services/router/httpproxy/
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 10m ./services/router/l4/

# plinth deploy of a 20 MB image to two instances on three netns hosts and
# on three VMs, against importing it and starting the jobs by hand (the floor).
bench-deploy: image
	$(GO) test -count=1 -run '^$$' -bench BenchmarkDeploy -benchtime 1x -timeout 20m ./services/deployer/
	$(VM_ENV) $(GO) test -count=1 -tags vmtest -run '^$$' -bench BenchmarkDeploy -benchtime 1x -timeout 40m ./vm-tests/

# git push of a small app to its new page served, against the same image
# made by hand and released through the API (3 netns hosts).
bench-build: deps
	$(GO) test -count=1 -run '^$$' -bench BenchmarkBuild -benchtime 1x -v -timeout 20m ./services/builder/

# Each flavour against busybox on its own kernel: cloud (out/), then
# generic (out/generic).
bench-boot: image image-generic
	$(VM_ENV) $(GO) test -count=1 -tags vmtest -run '^$$' -bench BenchmarkBootReady -benchtime 1x -v -timeout 30m ./vm-tests/
	$(VM_ENV) PLINTH_IMAGE_DIR=$(CURDIR)/$(OUT)/generic $(GO) test -count=1 -tags vmtest -run '^$$' -bench BenchmarkBootReady -benchtime 1x -v -timeout 30m ./vm-tests/

lint: deps
	gofmt -l . | (! grep .)
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 -tags vmtest ./...

clean:
	rm -rf $(OUT)
