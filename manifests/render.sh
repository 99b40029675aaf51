#!/bin/sh
# Renders the operator's ServiceAccount, RBAC and Deployment in manifests/ from the Helm chart,
# the one source of its RBAC rules, so the two install paths cannot drift.
# tests/unit/test_install.py renders again and fails when a file here differs.
#   manifests/render.sh [OUTPUT_DIR]        (HELM=/path/to/helm; default: helm on PATH)
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/manifests}
helm=${HELM:-helm}
for part in serviceaccount:10-serviceaccount rbac:20-rbac deployment:30-deployment; do
  template=${part%%:*}
  file=${part#*:}
  {
    echo "# Generated from helm/shopdb-operator (default values) by manifests/render.sh; do not edit."
    "$helm" template shopdb-operator "$repo/helm/shopdb-operator" --namespace shopdb-system \
      --kube-version 1.30.0 --set crds.install=false --show-only "templates/$template.yaml"
  } > "$out/$file.yaml.tmp"
  mv "$out/$file.yaml.tmp" "$out/$file.yaml"
done
