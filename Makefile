# csi-ploop: `make test` is the one test command (README and CI use it).
GO ?= go
BIN := bin/csi-ploop

.PHONY: build test test-short deps fuzz bench run run-built

# make run (as root): the data plane, then the driver, with the default
# paths (RUN_DIR, RUN_ROOT, RUN_ARGS override them). The data plane starts
# detached in its own session and its own cgroup (beside the caller's, on
# every hierarchy), unless one runs already: killing the driver, even every
# process of its cgroup as a container runtime does, leaves every volume's
# I/O running, and the next driver adopts the attachments. Stop the data
# plane with "bin/csi-ploop dataplane stop" (its serving processes keep
# running until their volumes are detached). run-built skips the build
# (BIN names the binary).
RUN_DIR ?= /run/csi-ploop
RUN_ROOT ?= /var/lib/csi-ploop
DATAPLANE_CGROUP ?= csi-ploop-dataplane
RUN_ARGS ?=
run: build run-built

run-built:
	$(BIN) dataplane start --socket $(RUN_DIR)/dataplane.sock --run-dir $(RUN_DIR) --cgroup "$(DATAPLANE_CGROUP)"
	exec $(BIN) --endpoint unix://$(RUN_DIR)/csi.sock --root $(RUN_ROOT) --run-dir $(RUN_DIR) \
		--dataplane-socket $(RUN_DIR)/dataplane.sock $(RUN_ARGS)

build:
	$(GO) build -o $(BIN) ./cmd/csi-ploop

# Needs root for the kernel tests (loop devices, FUSE, mounts); qemu-img and
# friends must be installed (make deps) — CSI_PLOOP_REQUIRE_TOOLS turns a
# missing tool into a failure instead of a skip.
test:
	$(GO) vet ./...
	CSI_PLOOP_REQUIRE_TOOLS=1 CSI_PLOOP_SANITY=1 $(GO) test -count=1 -timeout 40m ./...
	CSI_PLOOP_SANITY=1 CSI_PLOOP_SANITY_ACCESS=block $(GO) test -count=1 -run TestSanity ./pkg/driver/

test-short:
	$(GO) test -count=1 ./pkg/image/ ./pkg/volume/ ./pkg/driver/

# Debian packages the tests drive: qemu-img/qemu-io (interop), mkfs/fsck/
# resize for ext4 and xfs, fio for bench/, fuse3.
deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-utils fio xfsprogs e2fsprogs fuse3 util-linux >/dev/null

fuzz:
	$(GO) test ./pkg/image -run '^$$' -fuzz FuzzDecodeHeader -fuzztime 60s
	$(GO) test ./pkg/image -run '^$$' -fuzz FuzzDecodeDescriptor -fuzztime 60s
	$(GO) test ./pkg/image -run '^$$' -fuzz FuzzOpenDelta -fuzztime 60s

bench:
	$(GO) test ./pkg/image -run '^$$' -bench . -benchtime 2s

# Deploy manifests: render deploy/kubernetes with the kustomize API (what
# `kubectl apply -k` runs), decode every object strictly into its Kubernetes
# API type, check them against the driver's flags; and the kubelet plugin
# registration service answering a kubelet-style client. Also part of `test`.
.PHONY: manifests
manifests:
	$(GO) test -count=1 ./deploy/... ./pkg/registration/

# A real single-node Kubernetes (built from the Go module proxy) with csi-ploop
# deployed from deploy/, the kubectl user story and the storage e2e suite.
# Root, not part of `make test` or CI; see README, "End-to-end on a real cluster".
.PHONY: e2e
e2e:
	test/e2e/run.sh
