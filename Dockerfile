# csi-ploop image: docker build -t ghcr.io/csi-ploop/csi-ploop:latest .
# (buildah/podman/kaniko work the same way.) One static binary: the CSI driver,
# its kubelet registration and health endpoint, and "csi-ploop image ..."; the
# driver starts each volume's serving process by re-executing itself
# ("csi-ploop image attach"), so the runtime image needs nothing else of ours.

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
        -o /out/csi-ploop ./cmd/csi-ploop

FROM debian:bookworm-slim
# mkfs/fsck/resize for ext4 and xfs; mount, umount, blkid, blockdev, fstrim for
# k8s.io/mount-utils. Loop devices and FUSE are driven through ioctls and the
# mount syscall (no fusermount), but need the host's /dev: the node container
# runs privileged with /dev mounted from the host (/dev/fuse, /dev/loop-control,
# /dev/loopN), see deploy/kubernetes/node.yaml.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        e2fsprogs xfsprogs util-linux mount \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/csi-ploop /usr/local/bin/csi-ploop
ENTRYPOINT ["/usr/local/bin/csi-ploop"]
