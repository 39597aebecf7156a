#!/usr/bin/env bash
# Builds the deploy/ rendering tools (kustomize, helm) and dhpp-promql (our
# own PromQL reader for deploy/'s monitoring tests, module ./promql) from the
# Go module proxy into ${DHPP_CACHE:-$HOME/.cache/dhpp}/bin, skipping any that are already there
# at the pinned version. The versions are pinned by this directory's go.mod
# (a separate module, so helm's and kustomize's dependency graph never leaks
# into the driver's go.mod). The modules both graphs use are kept at the
# driver module's versions where that is an upgrade (k8s.io/api, client-go,
# x/net, ...): with the same versions and build flags (CGO_ENABLED=0,
# -trimpath, as the Makefile sets for everything) those packages are one
# entry in Go's build cache, compiled once for helm and the tests. After a
# bump of the root go.mod: `go -C hack/deploytools get MODULE@VERSION`.
# Chosen because they are the newest releases whose
# go.mod line builds with Go 1.26.x under GOTOOLCHAIN=local:
#   kustomize v5.8.2 (v5.8.3 needs go >= 1.27), helm v3.22.0.
#
# Usage: hack/deploytools/install.sh        # prints the bin dir on its last line
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${DHPP_CACHE:-$HOME/.cache/dhpp}"
bin="$cache/bin"
mkdir -p "$bin"

# version_of prints the version of a module as pinned in this go.mod.
version_of() {
	go -C "$here" list -m -f '{{.Version}}' "$1"
}

# promql_version is what dhpp-promql is built from: its source and go.mod,
# so any change to them rebuilds it.
promql_version() {
	cat "$here/promql/go.mod" "$here/promql/go.sum" "$here"/promql/*.go | sha256sum | cut -c1-16
}

# build NAME PACKAGE MODULE: builds PACKAGE as $bin/NAME unless a stamp file
# says the same version is already there. The stamp makes a version bump in
# go.mod rebuild the tool instead of silently keeping an old binary.
build() {
	local name="$1" pkg="$2" mod="$3" modver ver stamp
	# The stamp also carries this script's build recipe revision, so a change
	# in how a tool is built (ldflags) rebuilds it too.
	if [[ "$name" == dhpp-promql ]]; then
		modver="$(promql_version)"
	else
		modver="$(version_of "$mod")"
	fi
	ver="$modver recipe-$recipe"
	stamp="$bin/.$name.version"
	if [[ -x "$bin/$name" && -f "$stamp" && "$(cat "$stamp")" == "$ver" ]]; then
		echo "$name $modver already in $bin"
		return
	fi
	echo "building $name $modver into $bin (cold: a few minutes on 2 cores)"
	local start=$SECONDS
	# CGO_ENABLED=0: static binaries that do not depend on the host's libc.
	# The -X flags give `helm version` / `kustomize version` a real answer.
	local ldflags="-s -w"
	case "$name" in
	helm)
		ldflags+=" -X helm.sh/helm/v3/internal/version.version=$modver"
		# Helm's Makefile stamps the Kubernetes version it was built against
		# (from client-go v0.X.Y -> 1.X); without it `helm template` assumes
		# Kubernetes 1.20 and rejects charts with a newer kubeVersion.
		local cg minor
		cg="$(version_of k8s.io/client-go)"
		minor="$(echo "$cg" | cut -d. -f2)"
		for p in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
			ldflags+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$minor"
		done
		;;
	kustomize) ldflags+=" -X sigs.k8s.io/kustomize/api/provenance.version=kustomize/$modver" ;;
	esac
	local dir="$here"
	[[ "$name" == dhpp-promql ]] && dir="$here/promql"
	CGO_ENABLED=0 go -C "$dir" build -trimpath -ldflags "$ldflags" -o "$bin/$name.tmp" "$pkg"
	mv "$bin/$name.tmp" "$bin/$name"
	echo "$ver" >"$stamp"
	echo "built $name in $((SECONDS - start))s"
}

# Bump when the build commands above change.
recipe=2

build kustomize sigs.k8s.io/kustomize/kustomize/v5 sigs.k8s.io/kustomize/kustomize/v5
build helm helm.sh/helm/v3/cmd/helm helm.sh/helm/v3
build dhpp-promql . ""
echo "$bin"
