#!/usr/bin/env bash
# Brings up a Kubernetes (kind where Docker works, else the local one built from source),
# installs the operator with Helm, creates the example cluster and shows `kubectl get sdc`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
python=$(bash tests/bootstrap.sh)
namespace=shop

if command -v kind >/dev/null && docker info >/dev/null 2>&1; then
  echo "demo: using kind"
  kind get clusters | grep -qx shopdb-demo || kind create cluster --name shopdb-demo
  export KUBECONFIG=$(mktemp) && kind get kubeconfig --name shopdb-demo > "$KUBECONFIG"
  docker build -t shopdb/operator:dev .
  kind load docker-image shopdb/operator:dev --name shopdb-demo
  image_repo=shopdb/operator image_tag=dev
  helm=helm
  cluster_overrides=()
else
  echo "demo: no Docker here; bringing up the local Kubernetes (tests/cluster/localkube)"
  tests/cluster/localkube up
  tests/cluster/localkube image operator "$repo"
  eval "$(tests/cluster/localkube env)"
  image_repo=localhost/shopdb/operator image_tag=dev
  helm=$(ls /var/cache/shopdb-localkube/tools/bin/helm 2>/dev/null || command -v helm)
  cluster_overrides=(--postgres-image localhost/shopdb/postgres:15 --pgbouncer-image localhost/shopdb/pgbouncer:1
                     --redis-image localhost/shopdb/redis:7)
fi

"$helm" upgrade --install shopdb-operator helm/shopdb-operator --namespace shopdb-system --create-namespace \
  --set image.repository=$image_repo --set image.tag=$image_tag --wait --timeout 5m

kubectl create namespace $namespace --dry-run=client -o yaml | kubectl apply -f -
kubectl -n $namespace create configmap shop-schema --from-file=init.sql=manifests/examples/shop-schema.sql \
  --dry-run=client -o yaml | kubectl apply -f -
"$python" - "${cluster_overrides[@]}" <<'PY' | kubectl apply -f -
import sys, yaml
docs = [d for d in yaml.safe_load_all(open("manifests/examples/cluster-small.yaml")) if d]
cluster = next(d for d in docs if d["kind"] == "ShopDatabaseCluster")
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
spec = cluster["spec"]
for flag, section in (("--postgres-image", "postgres"), ("--pgbouncer-image", "pgbouncer"), ("--redis-image", "redis")):
    if flag in args:
        spec.setdefault(section, {})["image"] = args[flag]
print(yaml.safe_dump(cluster))
PY

echo "demo: waiting for the cluster to become Ready (a few minutes on 2 cores)"
for _ in $(seq 1 120); do
  phase=$(kubectl -n $namespace get sdc shop -o jsonpath='{.status.phase}' 2>/dev/null || true)
  [ "$phase" = Ready ] && break
  sleep 5
done
kubectl -n $namespace get sdc
kubectl -n $namespace get pods -o wide
cat <<TXT

Connect through PgBouncer from inside the cluster:
  host=shop-pgbouncer.$namespace port=5432 user=shop dbname=shop (writes) | shop_search | shop_orders | shop_analytics | shop_ro
  password: kubectl -n $namespace get secret shop-app -o jsonpath='{.data.password}' | base64 -d
TXT
[ "$phase" = Ready ]
