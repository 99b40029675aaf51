#!/usr/bin/env bash
# go install CoreDNS and helm at pinned versions into $TOOLS_BIN (cache dir).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/versions.sh"
stable_links() {  # $LK_CACHE/tools/bin/{helm,coredns}: a path that does not change with versions
  mkdir -p "$LK_CACHE/tools/bin"
  ln -sfn "$TOOLS_BIN/helm" "$LK_CACHE/tools/bin/helm"
  ln -sfn "$TOOLS_BIN/coredns" "$LK_CACHE/tools/bin/coredns"
}
if [ -x "$TOOLS_BIN/coredns" ] && [ -x "$TOOLS_BIN/helm" ]; then stable_links; exit 0; fi
mkdir -p "$TOOLS_BIN.partial"
export CGO_ENABLED=0 GOBIN=$TOOLS_BIN.partial GOTOOLCHAIN=$K8S_GO_TOOLCHAIN GOFLAGS=-trimpath
echo "[tools] coredns $COREDNS_VERSION" >&2
go install -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=${COREDNS_VERSION}" \
  "github.com/coredns/coredns@${COREDNS_VERSION}"
echo "[tools] helm $HELM_VERSION" >&2
go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} \
  -X helm.sh/helm/v3/internal/version.gitTreeState=clean" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
"$TOOLS_BIN.partial/coredns" -version
"$TOOLS_BIN.partial/helm" version --short
rm -rf "$TOOLS_BIN"; mv "$TOOLS_BIN.partial" "$TOOLS_BIN"
stable_links
