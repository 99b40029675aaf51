#!/usr/bin/env bash
# The whole test suite (or the paths given): installs what it needs, then pytest.
# Unit and data-plane tests need no cluster; e2e tests bring up the local Kubernetes
# (tests/cluster/localkube), or use SHOPDB_KUBECONFIG, or kind with --kind.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
python=$(bash tests/bootstrap.sh)
export PATH="$(dirname "$python"):$PATH"
# The data-plane tests' PgBouncer: the one bootstrap.sh built and linked into the venv.
export SHOPDB_PGBOUNCER=${SHOPDB_PGBOUNCER:-$(dirname "$python")/pgbouncer}
"$python" -m shopdb_operator.api.generate --check || {
  echo "generated files are stale: run 'make generate'" >&2; exit 1; }
if [ $# -eq 0 ]; then set -- tests; fi
# The local cluster's binaries, images and helm (cached by version; minutes only when cold).
# Tests that need no cluster still use its helm to check the chart.
if [ "$(id -u)" = 0 ] && [ -z "${SHOPDB_KUBECONFIG:-}" ]; then
  tests/cluster/localkube build >&2
fi
export HELM=${HELM:-$(source tests/cluster/lib/versions.sh && echo "$TOOLS_BIN/helm")}
exec "$python" -m pytest -p no:cacheprovider -ra "$@"
