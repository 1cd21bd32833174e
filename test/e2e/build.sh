#!/usr/bin/env bash
# Builds everything the end-to-end run needs, cached under $CACHE_DIR:
# Kubernetes binaries and e2e.test (a throwaway module: k8s.io/kubernetes plus
# replace directives for the published staging modules), the CSI sidecars
# (module proxy sources), the pause program and csi-ploop, and the OCI layouts
# of their images (umoci, no Docker). Every go build runs under nice -n 19.
# Usage: build.sh [all|base|k8s|e2etest|sidecars|images] (base: all but e2e.test)
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
mkdir -p "$BIN_DIR" "$IMG_DIR" "$CACHE_DIR/src"

timed() {
	local what=$1 t0=$SECONDS
	shift
	"$@"
	log "built $what in $((SECONDS - t0))s"
	echo "$what $((SECONDS - t0))s" >>"$CACHE_DIR/build-times.txt"
}

k8s_module() {
	local mod=$CACHE_DIR/k8s-mod
	if [[ -f $mod/.ready-$K8S_VERSION ]]; then return; fi
	mkdir -p "$mod"
	local kdir
	kdir=$("${NICE[@]}" go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
	[[ -d $kdir ]] || die "cannot download k8s.io/kubernetes@$K8S_VERSION"
	{
		echo "module csi-ploop-e2e/k8s"
		echo
		echo "go 1.25.0"
		echo
		echo "godebug default=go1.24"
		echo
		echo "require k8s.io/kubernetes $K8S_VERSION"
		echo
		local m
		# Every staging module k8s.io/kubernetes replaces with ./staging/...,
		# except the samples, comes from the proxy at the matching v0 version.
		while read -r m; do
			case $m in k8s.io/sample-cli-plugin | k8s.io/sample-controller) continue ;; esac
			echo "replace $m => $m $K8S_STAGING_VERSION"
		done < <(awk '/=> \.\/staging/ {print $1}' "$kdir/go.mod")
	} >"$mod/go.mod"
	cat >"$mod/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/test/e2e"
)
GO
	(cd "$mod" && "${NICE[@]}" go mod tidy)
	touch "$mod/.ready-$K8S_VERSION"
}

k8s_ldflags() {
	local minor=${K8S_VERSION#v1.}
	minor=${minor%%.*}
	local f="-s -w" p
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		f+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
		f+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
	done
	echo "$f"
}

build_k8s_bin() {
	local name=$1 out=$BIN_DIR/$1
	if [[ -x $out && -f $out.$K8S_VERSION ]]; then return; fi
	(cd "$CACHE_DIR/k8s-mod" && timed "$name" "${NICE[@]}" go build -trimpath -ldflags "$(k8s_ldflags)" -o "$out" "k8s.io/kubernetes/cmd/$name")
	touch "$out.$K8S_VERSION"
}

build_e2e_test() {
	local out=$BIN_DIR/e2e.test
	if [[ -x $out && -f $out.$K8S_VERSION ]]; then return; fi
	# The ginkgo CLI (same version as e2e.test's ginkgo) runs the suite in parallel.
	(cd "$CACHE_DIR/k8s-mod" && timed ginkgo "${NICE[@]}" go build -trimpath -o "$BIN_DIR/ginkgo" github.com/onsi/ginkgo/v2/ginkgo)
	(cd "$CACHE_DIR/k8s-mod" && timed e2e.test "${NICE[@]}" go test -c -trimpath -ldflags "$(k8s_ldflags)" -o "$out" k8s.io/kubernetes/test/e2e)
	touch "$out.$K8S_VERSION"
}

# fetch_module MODULE VERSION DEST: a writable copy of a module's source.
fetch_module() {
	local m=$1 v=$2 dest=$3 dir
	if [[ -f $dest/.ready ]]; then return; fi
	dir=$("${NICE[@]}" go mod download -json "$m@$v" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
	[[ -d $dir ]] || die "cannot download $m@$v"
	rm -rf "$dest"
	cp -r "$dir" "$dest"
	chmod -R u+w "$dest"
	touch "$dest/.ready"
}

# build_sidecar NAME MODULE VERSION CMD
build_sidecar() {
	local name=$1 m=$2 v=$3 cmd=$4 out=$BIN_DIR/$1
	if [[ -x $out && -f $out.$v ]]; then return; fi
	local src=$CACHE_DIR/src/$name-$v
	fetch_module "$m" "$v" "$src"
	if [[ $name == snapshot-controller || $name == csi-snapshotter ]]; then
		# The repository builds against its in-tree client; use the published one.
		sed -i "s#^replace github.com/kubernetes-csi/external-snapshotter/client/v8 => ./client#replace github.com/kubernetes-csi/external-snapshotter/client/v8 => github.com/kubernetes-csi/external-snapshotter/client/v8 $v#" "$src/go.mod"
	fi
	rm -rf "$src/vendor"
	(cd "$src" && timed "$name" "${NICE[@]}" go build -trimpath -ldflags "-s -w -X main.version=$v" -o "$out" "./cmd/$cmd")
	touch "$out.$v"
}

build_sidecars() {
	build_sidecar csi-provisioner github.com/kubernetes-csi/external-provisioner/v5 "$PROVISIONER_VERSION" csi-provisioner
	build_sidecar csi-attacher github.com/kubernetes-csi/external-attacher/v4 "$ATTACHER_VERSION" csi-attacher
	build_sidecar csi-resizer github.com/kubernetes-csi/external-resizer/v2 "$RESIZER_VERSION" csi-resizer
	build_sidecar csi-snapshotter github.com/kubernetes-csi/external-snapshotter/v8 "$SNAPSHOTTER_VERSION" csi-snapshotter
	build_sidecar snapshot-controller github.com/kubernetes-csi/external-snapshotter/v8 "$SNAPSHOTTER_VERSION" snapshot-controller
}

# The snapshot CRDs come with the external-snapshotter client module.
snapshot_crds() {
	fetch_module github.com/kubernetes-csi/external-snapshotter/client/v8 "$SNAPSHOTTER_VERSION" "$SNAPSHOT_CLIENT_DIR"
	ls "$SNAPSHOT_CLIENT_DIR"/config/crd/snapshot.storage.k8s.io_*.yaml >/dev/null
}

build_ours() {
	# Always rebuilt: it is the code under test (a few seconds warm).
	(cd "$REPO_ROOT" && timed csi-ploop "${NICE[@]}" go build -trimpath -ldflags "-s -w -X main.version=e2e" -o "$BIN_DIR/csi-ploop" ./cmd/csi-ploop)
	(cd "$REPO_ROOT" && "${NICE[@]}" go build -trimpath -ldflags "-s -w" -o "$BIN_DIR/pause" ./test/e2e/pause)
}

# copy_with_libs ROOTFS FILE...: copy host files and the shared libraries they need.
copy_with_libs() {
	local rootfs=$1 f lib
	shift
	for f in "$@"; do
		[[ -e $f ]] || continue
		if [[ -d $f && ! -L $f ]]; then
			mkdir -p "$rootfs$f"
			continue
		fi
		mkdir -p "$rootfs$(dirname "$f")"
		cp -a "$f" "$rootfs$f"
		if [[ -f $f && ! -L $f ]] && file -b "$f" | grep -q 'dynamically linked'; then
			for lib in $(ldd "$f" 2>/dev/null | grep -o '/[^ ]*'); do
				[[ -e $rootfs$lib ]] && continue
				mkdir -p "$rootfs$(dirname "$lib")"
				cp -L "$lib" "$rootfs$lib"
			done
		fi
	done
}

# make_image NAME ROOTFS [--cmd] ENTRYPOINT...: an OCI layout $IMG_DIR/NAME.tar (docker-archive-free,
# "ctr images import" reads OCI layout tarballs).
make_image() {
	local name=$1 rootfs=$2
	shift 2
	local work=$CACHE_DIR/oci/$name
	rm -rf "$work"
	mkdir -p "$work"
	umoci init --layout "$work/layout" >/dev/null
	umoci new --image "$work/layout:$IMAGE_TAG"
	umoci insert --image "$work/layout:$IMAGE_TAG" "$rootfs" / >/dev/null
	local args=() a key=--config.entrypoint
	if [[ ${1:-} == --cmd ]]; then
		key=--config.cmd
		shift
	fi
	for a in "$@"; do args+=("$key" "$a"); done
	umoci config --image "$work/layout:$IMAGE_TAG" "${args[@]}" --config.user 0:0 \
		--config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
	# ctr import needs the ref annotation to carry the full image name.
	sed -i "s#\"org.opencontainers.image.ref.name\":\"$IMAGE_TAG\"#\"org.opencontainers.image.ref.name\":\"localhost/$name:$IMAGE_TAG\"#" "$work/layout/index.json"
	tar -C "$work/layout" -cf "$IMG_DIR/$name.tar" .
	rm -rf "$work"
}

static_image() {
	local name=$1 bin=$2 rootfs
	rootfs=$(mktemp -d)
	mkdir -p "$rootfs/usr/local/bin" "$rootfs/tmp"
	cp "$BIN_DIR/$bin" "$rootfs/usr/local/bin/$bin"
	make_image "$name" "$rootfs" "/usr/local/bin/$bin"
	rm -rf "$rootfs"
}

# The csi-ploop image follows the Dockerfile's runtime stage (bookworm-slim +
# e2fsprogs xfsprogs util-linux mount): the same Debian bookworm packages are
# copied from this (bookworm) host - their files and the libraries they link -
# instead of being installed into a debian:bookworm-slim base by apt.
ploop_image() {
	local rootfs pkg files
	rootfs=$(mktemp -d)
	# Merged /usr, as in Debian bookworm: /bin, /sbin, /lib* point into /usr.
	mkdir -p "$rootfs/usr/bin" "$rootfs/usr/sbin" "$rootfs/usr/lib" "$rootfs/usr/lib64"
	ln -s usr/bin "$rootfs/bin"
	ln -s usr/sbin "$rootfs/sbin"
	ln -s usr/lib "$rootfs/lib"
	ln -s usr/lib64 "$rootfs/lib64"
	files=()
	for pkg in e2fsprogs xfsprogs util-linux mount libc-bin dash coreutils; do
		mapfile -t -O "${#files[@]}" files < <(dpkg -L "$pkg" | grep -E '^/(usr/)?s?bin/|^/etc/' || true)
	done
	copy_with_libs "$rootfs" "${files[@]}" /etc/mke2fs.conf
	[[ -e $rootfs/usr/bin/sh ]] || ln -sf dash "$rootfs/usr/bin/sh"
	mkdir -p "$rootfs/usr/local/bin" "$rootfs/tmp" "$rootfs/run" "$rootfs/var/lib" "$rootfs/dev" "$rootfs/proc" "$rootfs/sys"
	cp "$BIN_DIR/csi-ploop" "$rootfs/usr/local/bin/csi-ploop"
	make_image csi-ploop "$rootfs" /usr/local/bin/csi-ploop
	rm -rf "$rootfs"
}

# Workload pods (the story's and the storage suite's) run Debian's busybox-static.
busybox_image() {
	local rootfs a
	[[ -x /bin/busybox ]] || die "busybox missing: apt-get install busybox-static"
	rootfs=$(mktemp -d)
	mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc"
	cp /bin/busybox "$rootfs/bin/busybox"
	for a in $(/bin/busybox --list); do
		[[ -e $rootfs/bin/$a ]] || ln -s busybox "$rootfs/bin/$a"
	done
	echo "root:x:0:0:root:/root:/bin/sh" >"$rootfs/etc/passwd"
	echo "root:x:0:" >"$rootfs/etc/group"
	make_image busybox "$rootfs" --cmd sh
	# Stand-in for the suite's agnhost image, which the storage tests only use
	# as the privileged "hostexec" pod (args "pause", then "nsenter
	# --mount=/rootfs/proc/1/ns/mnt -- sh -c CMD" exec'd into it, /rootfs being
	# a hostPath of the node's /): busybox that sleeps whatever the arguments,
	# plus an nsenter wrapper. This VM's PID 1 (the VM's own agent, not an init
	# that started the kubelet) refuses everyone, root included, to open its
	# namespaces ("nsenter: cannot open /proc/1/ns/mnt: Permission denied" on
	# the host too), so the wrapper enters the kubelet's mount namespace - the
	# node's, which is what the tests mean - when PID 1's cannot be entered.
	mkdir -p "$rootfs/usr/local/bin"
	cat >"$rootfs/usr/local/bin/nsenter" <<'EOF'
#!/bin/sh
if [ "$1" = --mount=/rootfs/proc/1/ns/mnt ] && ! /bin/nsenter "$1" -- true 2>/dev/null; then
	for d in /rootfs/proc/[0-9]*; do
		if [ "$(cat "$d/comm" 2>/dev/null)" = kubelet ]; then
			shift
			exec /bin/nsenter "--mount=$d/ns/mnt" "$@"
		fi
	done
fi
exec /bin/nsenter "$@"
EOF
	chmod 755 "$rootfs/usr/local/bin/nsenter"
	make_image agnhost "$rootfs" /bin/sh -c 'exec sleep 2147483647' agnhost
	rm -rf "$rootfs/usr/local"
	# Stand-in for jessie-dnsutils (multiVolume pods): GNU coreutils over
	# busybox, since the tests use "dd oflag=nocache" which busybox lacks. And
	# dash as /bin/sh: busybox's sh runs its own applets (dd included) before
	# looking at PATH, so with busybox as sh "dd" would stay busybox's.
	local f lib
	while read -r f; do
		rm -f "$rootfs/bin/$(basename "$f")"
		cp -L "$f" "$rootfs/bin/$(basename "$f")"
		for lib in $(ldd "$f" 2>/dev/null | grep -o '/[^ ]*'); do
			mkdir -p "$rootfs$(dirname "$lib")"
			cp -L "$lib" "$rootfs$lib"
		done
	done < <(dpkg -L coreutils | grep -E '^/(usr/)?bin/[^/]+$'; echo /usr/bin/dash)
	rm -f "$rootfs/bin/sh"
	ln -s dash "$rootfs/bin/sh"
	make_image jessie-dnsutils "$rootfs" --cmd sh
	rm -rf "$rootfs"
}

build_images() {
	build_ours
	ploop_image
	busybox_image
	static_image pause pause
	local s
	for s in csi-provisioner csi-attacher csi-resizer csi-snapshotter snapshot-controller; do
		static_image "$s" "$s"
	done
}

build_k8s() {
	timed k8s-module k8s_module
	local b
	for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl; do
		build_k8s_bin "$b"
	done
}

target=${1:-all}
case $target in
k8s) build_k8s ;;
e2etest) k8s_module && build_e2e_test ;;
sidecars) build_sidecars && snapshot_crds ;;
images) build_images ;;
base | all)
	command -v etcd >/dev/null || die "etcd missing: apt-get install etcd-server"
	build_k8s
	build_sidecars
	snapshot_crds
	build_images
	[[ $target == base ]] || build_e2e_test
	;;
*) die "usage: $0 [all|base|k8s|e2etest|sidecars|images]" ;;
esac
