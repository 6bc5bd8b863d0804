#!/usr/bin/env bash
# Ensures the binaries that test/kube/kubetest runs are built and cached:
# kube-apiserver, kube-controller-manager (k8s.io/kubernetes) and etcd
# (go.etcd.io/etcd/server/v3), all built from the Go module proxy by the module
# in hack/kube-tools, at the versions its go.mod names.
#
# Idempotent: a binary that exists and reports the expected version is kept.
# The first build takes several minutes; later runs take about a second.
#
#   MESHD_CACHE         cache root (default $HOME/.cache/meshd)
#   MESHD_KUBE_BIN_DIR  where the binaries go (default $MESHD_CACHE/kube/<kubernetes version>/bin)
#   GO                  the go command (default go)
#
# Prints, last, one NAME=PATH line per binary.
set -euo pipefail

# Everything is in main, so that bash has parsed the whole script before it runs
# any of it: editing the file during a (long) build cannot derail the run.
main() {
	here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
	mod="$here/kube-tools"
	GO=${GO:-go}

	modversion() { awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$mod/go.mod"; }
	kube_version=$(modversion k8s.io/kubernetes)
	etcd_version=$(modversion go.etcd.io/etcd/server/v3)
	if [[ -z "$kube_version" || -z "$etcd_version" ]]; then
		echo "kube-tools: cannot read the kubernetes/etcd versions from $mod/go.mod" >&2
		exit 1
	fi

	cache=${MESHD_CACHE:-${HOME:?set HOME or MESHD_CACHE}/.cache/meshd}
	bin=${MESHD_KUBE_BIN_DIR:-$cache/kube/$kube_version/bin}
	mkdir -p "$bin"

	log() { echo "kube-tools: $*" >&2; }

	# has NAME WANT: the binary exists and its --version output contains WANT.
	has() {
		local out
		[[ -x "$bin/$1" ]] && out=$("$bin/$1" --version 2>/dev/null) && [[ $out == *"$2"* ]]
	}

	# build NAME PACKAGE [go build flags...]: builds into a temporary file in $bin and
	# renames it into place, so an interrupted build never leaves a half-written binary.
	build() {
		local name=$1 pkg=$2
		shift 2
		local tmp
		tmp=$(mktemp "$bin/.$name.XXXXXX")
		log "building $name from $pkg (go $($GO env GOVERSION), GOMAXPROCS ${GOMAXPROCS:-$(nproc)}) ..."
		local start=$SECONDS
		if ! (cd "$mod" && "$GO" build -o "$tmp" "$@" "$pkg"); then
			rm -f "$tmp"
			log "building $name failed"
			return 1
		fi
		mv -f "$tmp" "$bin/$name"
		log "built $bin/$name in $((SECONDS - start))s"
	}

	# Only inside this module: resolve and record dependencies as needed. The
	# caller's GOFLAGS (-mod, -modfile, -race...) and any go.work are for meshd's
	# module, not this one.
	export GOWORK=off CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"

	minor=${kube_version#v1.}
	minor=${minor%%.*}
	kube_ldflags="-s -w"
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		kube_ldflags+=" -X $p.gitVersion=$kube_version -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
	done

	todo=0
	for name in kube-apiserver kube-controller-manager; do
		if has "$name" "Kubernetes $kube_version"; then
			log "$name $kube_version is up to date"
		else
			todo=1
			build "$name" "k8s.io/kubernetes/cmd/$name" -ldflags "$kube_ldflags"
		fi
	done
	if has etcd "etcd Version: ${etcd_version#v}"; then
		log "etcd $etcd_version is up to date"
	else
		todo=1
		build etcd go.etcd.io/etcd/server/v3 -ldflags "-s -w"
	fi

	for name in kube-apiserver kube-controller-manager etcd; do
		want="Kubernetes $kube_version"
		[[ $name == etcd ]] && want="etcd Version: ${etcd_version#v}"
		if ! has "$name" "$want"; then
			log "$bin/$name does not report '$want'"
			exit 1
		fi
	done
	[[ $todo == 1 ]] && log "done: kubernetes $kube_version, etcd $etcd_version in $bin"

	echo "kube-apiserver=$bin/kube-apiserver"
	echo "kube-controller-manager=$bin/kube-controller-manager"
	echo "etcd=$bin/etcd"
}

main "$@"
