"""The Helm install path: the chart installs the CRD and the operator, which then builds a
cluster; in namespace mode it works with a Role in the watched namespace only."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from support import (REPO, build_operator_image, cluster_status, example_cluster, helm_binary, psql,
                     wait_for)

pytestmark = pytest.mark.e2e

RELEASE = "shopdb-e2e"
# One release name and namespace for every install here: the CRD, kept after uninstall,
# stays adoptable by the next install of the same release.
OPERATOR_NAMESPACE = "shopdb-helm-e2e"


def helm(kubectl, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([helm_binary(), "--kubeconfig", kubectl.kubeconfig, *args], capture_output=True,
                          text=True, timeout=600)
    if check:
        assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def image_values(images) -> list[str]:
    repository, _, tag = images.operator.rpartition(":")
    return ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}"]


def minimal_cluster(images, namespace: str) -> str:
    cluster = example_cluster(images, namespace)
    cluster["spec"]["replicas"] = [{"name": "search", "poolSize": 10}]
    cluster["spec"]["redis"] = {"enabled": False}
    cluster["spec"]["postgres"].pop("initSQL", None)
    cluster["spec"]["reclaimPolicy"] = "Delete"
    return yaml.safe_dump(cluster)


@pytest.mark.parametrize("scope", ["cluster", "namespace"])
def test_helm_install_builds_a_cluster(kubectl, images, namespace, scope):
    build_operator_image(kubectl)
    operator_ns = OPERATOR_NAMESPACE
    args = ["install", RELEASE, str(REPO / "helm" / "shopdb-operator"), "--namespace", operator_ns,
            "--create-namespace", "--wait", "--timeout", "5m", *image_values(images),
            "--set", f"rbac.scope={scope}"]
    if scope == "namespace":
        args += ["--set", f"watchNamespaces={{{namespace}}}"]
    helm(kubectl, *args)
    try:
        crd = kubectl.json("get", "crd", "shopdatabaseclusters.shopdb.io")
        assert crd["spec"]["versions"][0]["name"] == "v1alpha1"
        kubectl.apply(minimal_cluster(images, namespace))
        wait_for(lambda: cluster_status(kubectl, namespace).get("phase") == "Ready", 600,
                 f"the cluster to become Ready under a {scope}-scoped operator", interval=5)
        rows = psql(kubectl, namespace, "shop-1-0", "select count(*) from pg_stat_replication where state = 'streaming'")
        assert rows == "1"
        kubectl("-n", namespace, "delete", "sdc", "shop", "--wait=true", timeout=300)
        # reclaimPolicy: Delete takes the volumes and credentials with the cluster
        wait_for(lambda: not kubectl.json("-n", namespace, "get", "pvc,secrets", "-l", "shopdb.io/cluster=shop")["items"],
                 180, "volumes and credentials to be deleted with the cluster")
    finally:
        helm(kubectl, "uninstall", RELEASE, "--namespace", operator_ns, "--wait", check=False)
    # `helm uninstall` keeps the CRD (resource-policy: keep), so no user's cluster is lost
    assert kubectl("get", "crd", "shopdatabaseclusters.shopdb.io", check=False).returncode == 0
