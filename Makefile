# csi-ploop: `make test` is the one test command (README and CI use it).
GO ?= go
BIN := bin/csi-ploop

.PHONY: build test test-short deps fuzz bench run

run: build
	$(BIN) --endpoint unix:///run/csi-ploop/csi.sock --root /var/lib/csi-ploop

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
