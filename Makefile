# dhpp — the two commands from the README, and the pieces they are made of.
# Every target that needs root says so; the test target is what CI runs.

SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/dhpp-io/dhpp/pkg/dhpp.Version=$(VERSION)
DHPP_CACHE ?= $(HOME)/.cache/dhpp
export DHPP_CACHE

# One build configuration for every go command make starts, directly or
# through the tests (go vet, go test, the harness's go run/go build of the
# driver and hack/images, the tool builds): CGO off and -trimpath. Go's build
# cache is keyed by that configuration, so any difference (vet with cgo and
# tests without, say) compiles the whole dependency graph twice; static
# binaries and trimmed paths are what the images want anyway. GOFLAGS keeps
# whatever `go env GOFLAGS` already says.
export CGO_ENABLED := 0
export GOFLAGS := -trimpath $(filter-out -trimpath,$(shell $(GO) env GOFLAGS))

# Debian packages the tests and the demo use (the VM and cluster harnesses
# install their own on first use).
APT_PACKAGES := btrfs-progs xfsprogs e2fsprogs util-linux mount kmod busybox-static gcc libc6-dev fio

.PHONY: all build kubectl-dhpp image demo demo-down demo-local demo-local-down cluster-up cluster-down test e2e e2e-prebuild conformance unit deps tools snapshot-crds bench bench-io bench-cluster bench-scale vet

# The supported Kubernetes versions, oldest first: the one list lives in
# test/e2e/cluster (KubernetesVersions).
# (make 4.3 does not pass exported variables to $(shell): hence the env.)
K8S_VERSIONS = $(shell CGO_ENABLED=$(CGO_ENABLED) GOFLAGS="$(GOFLAGS)" $(GO) run ./test/e2e/cmd/dhpp-cluster versions)

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/dhpp-driver ./cmd/dhpp-driver

## kubectl-dhpp: the kubectl plugin (`kubectl dhpp pools`); put bin/ on PATH
## or copy bin/kubectl-dhpp to a directory on it.
kubectl-dhpp:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/kubectl-dhpp ./cmd/kubectl-dhpp

## image: the production image (dhpp-driver and dhpp-controller, one image)
## as a docker-archive at $(IMAGE_TAR), tagged $(IMAGE), which `docker load`,
## `ctr images import` and `skopeo copy docker-archive:...` read. Built from
## the Dockerfile where a Docker daemon answers, else by the project's own
## image builder (hack/images: the host's static binaries and tools, no
## container engine). IMAGE_BUILDER=docker|hack forces one.
IMAGE ?= ghcr.io/dhpp-io/dhpp-driver:$(VERSION)
IMAGE_TAR ?= _output/dhpp-image.tar
IMAGE_BUILDER ?=

image:
	@mkdir -p $(dir $(IMAGE_TAR)); builder="$(IMAGE_BUILDER)"; \
	if [ -z "$$builder" ]; then docker info >/dev/null 2>&1 && builder=docker || builder=hack; fi; \
	echo "building $(IMAGE) with $$builder"; \
	if [ "$$builder" = docker ]; then \
		docker build --build-arg VERSION=$(VERSION) -t "$(IMAGE)" . && docker save -o "$(IMAGE_TAR)" "$(IMAGE)"; \
	else \
		d=$$(mktemp -d) && trap 'rm -rf "$$d"' EXIT && \
		$(GO) run ./hack/images -out "$$d" -only dhpp-driver -driver-tag "$(IMAGE)" -ldflags "$(LDFLAGS)" >/dev/null && \
		mv "$$d/dhpp-driver.tar" "$(IMAGE_TAR)"; \
	fi && echo "$(IMAGE) -> $(IMAGE_TAR)"

## demo: the README's first command (root): the local 3-node cluster, dhpp
## installed from deploy/, and a StatefulSet with a volume on each node.
demo: deps
	hack/demo-cluster.sh up

demo-down:
	hack/demo-cluster.sh down

## demo-local: the driver alone on a loop-backed disk, driven with grpcurl.
demo-local: deps build
	hack/demo.sh up

demo-local-down:
	hack/demo.sh down

cluster-up:
	$(GO) run ./test/e2e/cmd/dhpp-cluster up --install-dhpp

cluster-down:
	$(GO) run ./test/e2e/cmd/dhpp-cluster down

## test: the README's second command (root): every test, as CI runs it. The
## cluster tests run last and alone, as they bring up the local cluster: the
## scenarios on the newest supported Kubernetes (with the storage suite's
## tools building behind them, e2e-prebuild), then the upstream storage
## suite on every supported one (K8S_VERSIONS).
test: deps tools vet
	CI=$${CI:-true} $(GO) test -count=1 -timeout 60m ./...
	$(MAKE) e2e-prebuild
	$(MAKE) conformance

## e2e: the scenarios on the real local cluster, on the newest supported
## Kubernetes unless DHPP_K8S_VERSION picks another (`dhpp-cluster version`
## prints it); reuses a running cluster of the same version. E2E_RUN narrows
## it (go test -run), e.g. `make e2e E2E_RUN=TestOnlineExpansion`.
E2E_RUN ?=
e2e:
	mkdir -p _output; CI=$${CI:-true} $(GO) test -count=1 -tags e2e -p 1 -v -timeout 60m $(if $(E2E_RUN),-run '$(E2E_RUN)') ./test/e2e/ 2>&1 | tee _output/e2e.log | grep --line-buffered -E '^(=== RUN|--- |PASS|FAIL|ok)|e2e_test|_test.go' ; exit $${PIPESTATUS[0]}

## e2e-prebuild: make e2e, while the tools make conformance needs beyond the
## e2e's own (the other versions' server binaries, every version's e2e.test:
## `dhpp-cluster prebuild`) build in the background, so that a cold machine
## compiles them while the scenarios mostly wait on the cluster. First the
## e2e version's tools, in the foreground: the prebuild then finds the shared
## ones (sidecars) stamped. The prebuild runs in a session of its own whose
## autogroup nice is 19 (with autogroup scheduling, the kernel shares CPU
## between sessions first: a plain `nice` would only yield to this make) and
## at nice 19. Its output goes to PREBUILD_LOG. After the scenarios it is
## waited for: its failure fails this target, with its log; a failed e2e
## stops it. Warm, it is seconds of stamp checks. Tool builds lock per tool
## (test/e2e/cluster), so a later foreground build of the same tool waits.
PREBUILD_LOG ?= _output/prebuild.log
e2e-prebuild:
	$(GO) run ./test/e2e/cmd/dhpp-cluster tools
	@mkdir -p $(dir $(PREBUILD_LOG)); \
	setsid bash -c 'echo 19 2>/dev/null >/proc/self/autogroup; exec nice -n 19 "$$@"' prebuild \
		$(GO) run ./test/e2e/cmd/dhpp-cluster prebuild $(K8S_VERSIONS) >$(PREBUILD_LOG) 2>&1 & pb=$$!; \
	trap 'kill -- -$$pb 2>/dev/null' EXIT; \
	echo "building the tools of make conformance in the background (nice 19): $(PREBUILD_LOG)"; \
	$(MAKE) e2e || exit 1; \
	echo "waiting for the background build of the conformance tools ($(PREBUILD_LOG))"; \
	wait $$pb || { echo "background build of the conformance tools FAILED ($(PREBUILD_LOG)):"; cat $(PREBUILD_LOG); exit 1; }; \
	cat $(PREBUILD_LOG)

## conformance: the upstream Kubernetes storage e2e suite (External Storage
## specs for hostpath.dhpp.io, test/e2e/conformance) on each version in
## K8S_VERSIONS (default: all supported), one cluster after the other.
conformance:
	mkdir -p _output; set -o pipefail; failed=""; for v in $(K8S_VERSIONS); do \
		echo "==> conformance on Kubernetes $$v"; \
		DHPP_K8S_VERSION=$$v CI=$${CI:-true} $(GO) test -count=1 -tags e2e -v -timeout 110m ./test/e2e/conformance/ 2>&1 \
			| tee _output/conformance-$$v.log | grep --line-buffered -E '^(=== RUN|--- |PASS|FAIL|ok)|conformance_test.go' || failed="$$failed $$v"; \
	done; if [ -n "$$failed" ]; then echo "conformance FAILED on:$$failed"; exit 1; fi

## unit: the tests that need neither root nor tools (quick local loop).
unit:
	$(GO) test -count=1 -short ./pkg/... ./internal/app/

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

tools:
	hack/deploytools/install.sh

## snapshot-crds: copy the VolumeSnapshot CRDs of the external-snapshotter
## client module go.mod pins into deploy/ (kustomize component and Helm
## crds/); deploy/snapshot_test.go fails while the copies differ.
SNAPSHOT_CRDS := volumesnapshotclasses volumesnapshotcontents volumesnapshots
snapshot-crds:
	d=$$($(GO) mod download -json github.com/kubernetes-csi/external-snapshotter/client/v8 | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p') && test -n "$$d" && \
	for c in $(SNAPSHOT_CRDS); do for dest in deploy/kustomize/components/snapshot-crds deploy/helm/dhpp/crds; do \
		install -m 0644 "$$d/config/crd/snapshot.storage.k8s.io_$$c.yaml" $$dest/; \
	done; done

## bench: the Go benchmarks behind docs/benchmarks.md (root).
bench: deps
	$(GO) test -run '^$$' -bench . -benchtime 200x ./pkg/node/ ./pkg/driver/

## bench-io: the data path, fio in a plain directory vs in dhpp volumes of
## every host backend, on loop-backed disks, then the xfs and ext4
## project-quota backends in the vmtest VM (root; ~13 min + the VM; writes
## docs/benchmarks-io{,-vm}.{md,json,png}, see docs/benchmarks.md).
bench-io: deps
	CGO_ENABLED=0 $(GO) test -count=1 -run '^$$' -bench '^BenchmarkIO$$' -benchtime 1x -timeout 30m ./test/benchio/ -args -benchio.out $(CURDIR)/docs
	CGO_ENABLED=0 nice $(GO) test -count=1 -run '^TestIOVM$$' -timeout 45m ./test/benchio/ -args -benchio.vm -benchio.out $(CURDIR)/docs

## bench-scale: dhpp's per-node cost (RSS, CPU, API requests, watch traffic)
## with 0, 1,000 and 5,000 PVCs/PVs that are not dhpp's, on the local cluster
## with the apiserver audit log on, dhpp installed from the kustomize base as
## shipped (root; ~13 min: the run of 2026-11-29 19:23 took 12 min 44 s;
## docs/benchmarks.md).
bench-scale: deps
	$(GO) run ./test/scale/cmd/dhpp-scale --levels 0,1000,5000

## bench-cluster: provisioning at scale on the local cluster, dhpp side by side
## with local-path-provisioner v0.0.30 (root; ~30 min; docs/benchmarks-cluster.md).
bench-cluster: deps
	$(GO) run ./test/e2e/cmd/dhpp-bench --n 10,100,300 --provisioners dhpp,local-path
