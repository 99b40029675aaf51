"""Helpers for e2e tests: waiting, installing the operator, talking to pods."""

from __future__ import annotations

import base64
import copy
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, TypeVar

import yaml

REPO = Path(__file__).resolve().parents[2]
LOCAL_KUBECONFIG = "/var/lib/shopdb-localkube/admin.kubeconfig"
OPERATOR_NAMESPACE = "shopdb-system"

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 2) -> T:
    """Poll `check` until it returns something truthy; fail with `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = check()
            if last:
                return last  # type: ignore[return-value]
        except AssertionError as err:  # a kubectl call that failed: keep waiting
            last = err
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last}")
        time.sleep(interval)


def is_local_cluster(kubectl) -> bool:
    return kubectl.kubeconfig == LOCAL_KUBECONFIG


_operator_image_built = False


def build_operator_image(kubectl) -> None:
    """On the local cluster, the operator image is built from this checkout (once a session)."""
    global _operator_image_built
    if not is_local_cluster(kubectl) or _operator_image_built:
        return  # kind or another cluster: the image was loaded by the caller
    localkube = REPO / "tests" / "cluster" / "localkube"
    proc = subprocess.run([str(localkube), "image", "operator", str(REPO)], capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, f"building the operator image failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    _operator_image_built = True


CRD = "shopdatabaseclusters.shopdb.io"


def finish_crd_deletion(kubectl) -> bool:
    """An earlier run interrupted in its teardown (killed, or its operator removed before it
    released a cluster's finalizer) leaves the CRD Terminating for good: kopf does not serve a
    CRD that is being deleted, so no operator installed now would release that finalizer, and
    no cluster can be created. The teardown is finished here: the leftover clusters'
    finalizers removed (their namespaces are the earlier run's), and the CRD waited for.
    True when there was one to finish."""
    crd = kubectl("get", "crd", CRD, "-o", "jsonpath={.metadata.deletionTimestamp}", check=False)
    if crd.returncode != 0 or not crd.stdout.strip():
        return False
    left = kubectl("get", "sdc", "-A", "-o", "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name} {end}",
                   check=False).stdout.split()
    for entry in left:
        namespace, name = entry.split("/", 1)
        print(f"finishing an earlier run's teardown: releasing {namespace}/{name}'s finalizer", flush=True)
        kubectl("-n", namespace, "patch", "sdc", name, "--type=merge", "-p", '{"metadata":{"finalizers":[]}}',
                check=False)
    kubectl("wait", "--for=delete", f"crd/{CRD}", "--timeout=120s", check=False, timeout=150)
    return True


def install_operator(kubectl, images) -> None:
    """crds/ and manifests/ applied as users do, running the operator image of this checkout."""
    build_operator_image(kubectl)
    finish_crd_deletion(kubectl)
    kubectl("apply", "-f", str(REPO / "crds"), "-f", str(REPO / "manifests"))
    kubectl("-n", OPERATOR_NAMESPACE, "set", "image", "deployment/shopdb-operator", f"operator={images.operator}")
    kubectl("-n", OPERATOR_NAMESPACE, "set", "env", "deployment/shopdb-operator",
            f"SHOPDB_OPERATOR_IMAGE={images.operator}")
    kubectl("-n", OPERATOR_NAMESPACE, "rollout", "status", "deployment/shopdb-operator", "--timeout=300s",
            timeout=330)


def helm_binary() -> str:
    candidates = [os.environ.get("HELM", ""), os.environ.get("SHOPDB_HELM", ""), shutil.which("helm") or "",
                  "/var/cache/shopdb-localkube/tools/bin/helm", "/var/cache/shopdb-tools/bin/helm"]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise AssertionError("helm not found: set HELM, or run tests/cluster/localkube build")


def secret_value(kubectl, namespace: str, name: str, key: str = "password") -> str:
    data = kubectl.json("-n", namespace, "get", "secret", name)["data"]
    return base64.b64decode(data[key]).decode()


def example_cluster(images, namespace: str, name: str = "shop") -> dict:
    """The small example cluster, with the test images."""
    documents = yaml.safe_load_all((REPO / "manifests" / "examples" / "cluster-small.yaml").read_text())
    cluster = copy.deepcopy(next(d for d in documents if d and d.get("kind") == "ShopDatabaseCluster"))
    cluster["metadata"] = {"name": name, "namespace": namespace}
    spec = cluster["spec"]
    spec.setdefault("postgres", {})["image"] = images.postgres
    spec.setdefault("pgbouncer", {})["image"] = images.pgbouncer
    spec.setdefault("redis", {})["image"] = images.redis
    spec["postgres"]["initSQL"] = {"configMapName": "shop-schema", "key": "init.sql"}  # apply_schema_config_map
    return cluster


def apply_schema_config_map(kubectl, namespace: str) -> None:
    schema = (REPO / "manifests" / "examples" / "shop-schema.sql").read_text()
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shop-schema", "namespace": namespace},
                "data": {"init.sql": schema}}
    kubectl.apply(yaml.safe_dump(manifest))


def cluster_status(kubectl, namespace: str, name: str = "shop") -> dict:
    return kubectl.json("-n", namespace, "get", "shopdatabasecluster", name).get("status") or {}


def psql(kubectl, namespace: str, pod: str, sql: str, database: str = "postgres") -> str:
    """Run SQL as the superuser over the pod's local socket."""
    proc = kubectl("-n", namespace, "exec", pod, "-c", "postgres", "--", "psql", "-X", "-v", "ON_ERROR_STOP=1",
                   "-At", "-d", database, "-c", sql, timeout=60)
    return proc.stdout.strip()


def psql_remote(kubectl, namespace: str, from_pod: str, conninfo: str, password: str, sql: str) -> str:
    """Run SQL from inside `from_pod` against another address; the password goes by stdin."""
    script = 'IFS= read -r PGPASSWORD; export PGPASSWORD; exec psql -X -v ON_ERROR_STOP=1 -At "$1" -c "$2"'
    proc = kubectl("-n", namespace, "exec", "-i", from_pod, "-c", "postgres", "--", "bash", "-c", script, "psql",
                   conninfo, sql, input=password + "\n", timeout=60)
    return proc.stdout.strip()


def operator_metrics(kubectl) -> list[tuple[str, dict, float]]:
    """Every sample of every operator pod's /metrics (port 9560), read through the API
    server's pod proxy: (name, labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families

    pods = kubectl.json("-n", OPERATOR_NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/name=shopdb-operator")
    samples = []
    for pod in pods["items"]:
        if pod["metadata"].get("deletionTimestamp") or not (pod.get("status") or {}).get("podIP"):
            continue
        text = kubectl("get", "--raw",
                       f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods/{pod['metadata']['name']}:9560/proxy/metrics").stdout
        for family in text_string_to_metric_families(text):
            samples += [(s.name, s.labels, s.value) for s in family.samples]
    return samples


def metric_values(samples: list[tuple[str, dict, float]], name: str, **labels: str) -> list[float]:
    return [v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in labels.items())]
