#!/usr/bin/env bash
# Build the Kubernetes server binaries from the k8s.io/kubernetes Go module
# through a generated wrapper module (lives in the cache dir, never in the repo).
#
#   build-k8s.sh OUTDIR
#
# Env: K8S_VERSION (v1.MINOR.PATCH), K8S_GO_TOOLCHAIN (Go toolchain to build with).
set -euo pipefail
K8S_VERSION=${K8S_VERSION:?}
OUT=${1:?outdir}
STAGING_VERSION=v0.${K8S_VERSION#v1.}
WORK=$(dirname "$OUT")/src
mkdir -p "$WORK" "$OUT"
cd "$WORK"

export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=${K8S_GO_TOOLCHAIN:-auto}

# Every staging module that k8s.io/kubernetes replaces with ./staging/src/...
# gets replaced with its published release of the same patch level.
go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" > download.json \
  || { cat download.json >&2; echo "(is K8S_GO_TOOLCHAIN the release's .go-version?)" >&2; exit 1; }
KDIR=$(go env GOMODCACHE)/k8s.io/kubernetes@${K8S_VERSION}
mapfile -t STAGING < <(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$KDIR/go.mod")
[ "${#STAGING[@]}" -ge 29 ] || { echo "expected >=29 staging modules, got ${#STAGING[@]}" >&2; exit 1; }
# Build with the release's own Go (its .go-version), as upstream does.
WANT_GO=go$(cat "$KDIR/.go-version" 2>/dev/null || true)
if [ -n "${K8S_GO_TOOLCHAIN:-}" ] && [ "$WANT_GO" != go ] && [ "$K8S_GO_TOOLCHAIN" != "$WANT_GO" ]; then
  echo "K8S_GO_TOOLCHAIN=$K8S_GO_TOOLCHAIN, but $K8S_VERSION's .go-version says $WANT_GO" >&2; exit 1
fi

# The wrapper declares the same language version and GODEBUG defaults as upstream's
# own go.mod (v1.34: "go 1.24.0", "godebug default=go1.24").
GO_DIRECTIVE=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$KDIR/go.mod")
GODEBUG_LINE=$(grep -E '^godebug ' "$KDIR/go.mod" || true)
[ -n "$GO_DIRECTIVE" ] || { echo "no go directive in $KDIR/go.mod" >&2; exit 1; }

{
  echo "module shopdb.local/k8sbuild"
  echo
  echo "go ${GO_DIRECTIVE}"
  echo
  [ -z "$GODEBUG_LINE" ] || { echo "$GODEBUG_LINE"; echo; }
  echo "require k8s.io/kubernetes ${K8S_VERSION}"
  echo
  echo "replace ("
  for m in "${STAGING[@]}"; do echo "	$m => $m ${STAGING_VERSION}"; done
  echo ")"
} > go.mod
rm -f go.sum

PKGS=(cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy)
FULL=()
for p in "${PKGS[@]}"; do FULL+=("k8s.io/kubernetes/$p"); done
go get "${FULL[@]/%/@${K8S_VERSION}}" 2>&1 | tail -5

# Version stamping like hack/lib/version.sh does. Module zips carry no VCS
# data, so the commit is not known: gitCommit says so instead of inventing one.
BUILD_DATE=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/${K8S_VERSION}.info")
COMMIT=unknown-from-go-module-proxy
MAJOR=1; MINOR=$(echo "$K8S_VERSION" | cut -d. -f2)
LDF="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LDF+=" -X $p.gitVersion=${K8S_VERSION} -X $p.gitMajor=${MAJOR} -X $p.gitMinor=${MINOR}"
  LDF+=" -X $p.gitCommit=${COMMIT} -X $p.gitTreeState=clean -X $p.buildDate=${BUILD_DATE}"
done

echo "go toolchain: $(go version)"
echo "building ${PKGS[*]} @ ${K8S_VERSION} (commit ${COMMIT})"
time go build -trimpath -tags selinux,notest -ldflags "$LDF" -o "$OUT/" "${FULL[@]}"
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
  "$OUT/$b" --version
done
