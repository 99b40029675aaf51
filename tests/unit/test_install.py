"""The install paths: plain manifests/, the Helm chart, the examples and the Dockerfile.

No cluster needed. The Helm tests need a helm binary: $HELM, `helm` on PATH,
/var/cache/shopdb-tools/bin/helm or the local cluster's; without one they skip, except
under CI (env CI set) where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

import shopdb_operator
from shopdb_operator.api import generate
from shopdb_operator.api.crd import crd
from shopdb_operator.api.quantity import to_bytes
from shopdb_operator.api.spec import ClusterSpec
from shopdb_operator.builders.common import OPERATOR_POD_LABELS
from shopdb_operator.cli import parser as cli_parser

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
PLAIN_RULES_FILE = MANIFESTS / "monitoring" / "prometheus-rules.yaml"
EXAMPLES = MANIFESTS / "examples"
CHART = REPO / "helm" / "shopdb-operator"
OPERATOR_NAMESPACE = "shopdb-system"
IMAGE = f"shopdb/operator:{shopdb_operator.__version__}"
# The lowest Kubernetes the chart supports (Chart.yaml kubeVersion); rendering checks against it.
KUBE_VERSION = "1.30.0"

# What the operator may do to the objects of a database cluster, in any namespace it serves.
NAMESPACED_RULES = {
    ("shopdb.io", "shopdatabaseclusters"): {"get", "list", "watch", "patch", "update"},
    ("shopdb.io", "shopdatabaseclusters/status"): {"get", "patch", "update"},
    ("shopdb.io", "shopdatabaseclusters/finalizers"): {"update"},
    ("", "secrets"): {"get", "list", "watch", "create", "patch"},
    ("", "configmaps"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("", "persistentvolumeclaims"): {"get", "list", "watch", "patch", "delete"},
    ("", "pods"): {"get", "list", "watch", "patch", "delete"},
    ("", "pods/log"): {"get"},  # what a backup Job reports (pgbackrest info)
    ("", "pods/resize"): {"patch"},  # resources follow the role in place
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("apps", "statefulsets"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("policy", "poddisruptionbudgets"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("batch", "cronjobs"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "delete"},
    ("networking.k8s.io", "networkpolicies"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    # each cluster's primary Lease, and the instance-agent's account that renews it
    ("coordination.k8s.io", "leases"): {"get", "list", "watch", "create", "patch", "update"},
    ("", "serviceaccounts"): {"get", "list", "watch", "create", "patch", "update"},
    ("rbac.authorization.k8s.io", "roles"): {"get", "list", "watch", "create", "patch", "update"},
    ("rbac.authorization.k8s.io", "rolebindings"): {"get", "list", "watch", "create", "patch", "update"},
}
# Cluster-scoped reads kopf needs in either scope.
KOPF_CLUSTER_RULES = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"get", "list", "watch"},
}
CLUSTER_PEERING = {("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"}}
NAMESPACED_PEERING = {("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"}}
LEASE_RULES = {("coordination.k8s.io", "leases"): {"get", "list", "watch", "create", "patch", "update"}}


# --- helpers -------------------------------------------------------------------------------

def load_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def install_files() -> list[Path]:
    """What `kubectl apply -f manifests/` applies: the directory's own files, not examples/."""
    return sorted(p for p in MANIFESTS.iterdir() if p.suffix in {".yaml", ".yml", ".json"})


def install_docs() -> list[dict]:
    return [doc for path in install_files() for doc in load_docs(path)]


def only(docs: list[dict], kind: str, namespace: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind
             and (namespace is None or d["metadata"].get("namespace") == namespace)]
    assert len(found) == 1, f"expected one {kind} in {namespace or 'any namespace'}, found {len(found)}"
    return found[0]


def rule_map(rules: list[dict]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs; a pair granted twice would hide a mistake, so it fails."""
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert (group, resource) not in granted, f"{group}/{resource} granted twice"
                granted[(group, resource)] = set(rule["verbs"])
    return granted


def container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def example(name: str) -> tuple[dict, dict]:
    """(Namespace, ShopDatabaseCluster) of an example file."""
    docs = load_docs(EXAMPLES / name)
    return only(docs, "Namespace"), only(docs, "ShopDatabaseCluster")


# --- plain manifests -------------------------------------------------------------------------

def test_every_yaml_in_manifests_parses():
    paths = sorted(MANIFESTS.rglob("*.yaml"))
    assert len(paths) >= 6
    for path in paths:
        for doc in load_docs(path):
            if path == PLAIN_RULES_FILE:  # a Prometheus rules file (rule_files:), not an object
                assert list(doc) == ["groups"] and doc["groups"], path
                continue
            assert doc.get("apiVersion") and doc.get("kind"), path


def test_kubectl_apply_creates_the_namespace_first_and_skips_examples():
    files = install_files()
    assert files[0].name == "00-namespace.yaml"
    assert only(load_docs(files[0]), "Namespace")["metadata"]["name"] == OPERATOR_NAMESPACE
    assert not any(d["kind"] == "ShopDatabaseCluster" for d in install_docs())
    for doc in install_docs():
        if doc["kind"] not in {"Namespace", "ClusterRole", "ClusterRoleBinding"}:
            assert doc["metadata"]["namespace"] == OPERATOR_NAMESPACE, doc["metadata"]


def test_operator_deployment_runs_one_locked_down_pod():
    deployment = only(install_docs(), "Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    main = container(deployment)
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    # NetworkPolicies of database clusters admit the operator by exactly this label.
    assert OPERATOR_POD_LABELS.items() <= spec["template"]["metadata"]["labels"].items()
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == only(install_docs(), "ServiceAccount")["metadata"]["name"]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert main["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    tmp = next(m for m in main["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])

    assert main["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}
    assert main["image"] == IMAGE
    assert main["imagePullPolicy"] == "IfNotPresent"
    assert main["command"] + main["args"] == ["shopdb-operator", "run", "--all-namespaces"]
    assert cli_parser().parse_args(main["args"]).all_namespaces
    env = {e["name"]: e for e in main["env"]}
    assert env["SHOPDB_OPERATOR_IMAGE"]["value"] == main["image"]
    assert env["SHOPDB_OPERATOR_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_liveness_probe_matches_the_endpoint_the_cli_serves():
    main = container(only(install_docs(), "Deployment"))
    served = urlparse(cli_parser().parse_args(["run"]).liveness)
    probe = main["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert probe["path"] == served.path == "/healthz"
    assert ports.get(probe["port"], probe["port"]) == served.port == 8080
    assert "readinessProbe" not in main  # an operator serves no traffic


def test_cluster_role_grants_exactly_what_the_operator_needs():
    role = only(install_docs(), "ClusterRole")
    assert rule_map(role["rules"]) == {**KOPF_CLUSTER_RULES, **CLUSTER_PEERING, **NAMESPACED_RULES}
    binding = only(install_docs(), "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "shopdb-operator",
                                    "namespace": OPERATOR_NAMESPACE}]


def test_the_operator_lease_role_lives_in_the_operator_namespace():
    role = only(install_docs(), "Role", OPERATOR_NAMESPACE)
    assert rule_map(role["rules"]) == LEASE_RULES
    binding = only(install_docs(), "RoleBinding", OPERATOR_NAMESPACE)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}


def assert_least_privilege(docs: list[dict]) -> None:
    roles = [d for d in docs if d["kind"] in {"Role", "ClusterRole"}]
    assert roles
    for role in roles:
        for (group, resource), verbs in rule_map(role["rules"]).items():
            assert "*" not in {group, resource, *verbs}, role["metadata"]["name"]
            assert not resource.endswith(("/exec", "/attach", "/portforward", "/proxy")), resource
            assert not {"escalate", "bind", "impersonate"} & verbs, resource
            if group == "rbac.authorization.k8s.io":  # the agents' Roles: no more than the operator holds
                assert resource in {"roles", "rolebindings"} and not {"delete", "deletecollection"} & verbs
            if resource == "secrets":
                assert verbs <= {"get", "list", "watch", "create", "patch"}, verbs


def test_no_wildcards_exec_or_secret_deletion_in_manifests():
    assert_least_privilege(install_docs())


# --- examples ---------------------------------------------------------------------------------

def validate_openapi(value, schema: dict, path: str = "") -> list[str]:
    """The parts of a CRD's structural schema a client can check (CEL rules are the server's)."""
    errors: list[str] = []
    kind = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int}
    if kind in types and (not isinstance(value, types[kind]) or (kind == "integer" and isinstance(value, bool))):
        return [f"{path}: expected {kind}, got {value!r}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if len(value) > schema.get("maxLength", len(value)) or len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: length of {value!r} out of bounds")
    if isinstance(value, int) and not isinstance(value, bool):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            errors.append(f"{path}: {value} out of [{schema.get('minimum')}, {schema.get('maximum')}]")
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{path}: more than {schema['maxItems']} items")
        for i, item in enumerate(value):
            errors += validate_openapi(item, schema.get("items", {}), f"{path}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}.{key}: required")
        for key, item in value.items():
            if key in props:
                errors += validate_openapi(item, props[key], f"{path}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += validate_openapi(item, schema["additionalProperties"], f"{path}.{key}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{path}.{key}: unknown field (the API server would drop it)")
    return errors


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-small.yaml"])
def test_examples_validate_against_models_and_crd(name):
    namespace, cluster = example(name)
    assert cluster["metadata"]["namespace"] == namespace["metadata"]["name"]
    ClusterSpec.model_validate(cluster["spec"])
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert validate_openapi(cluster["spec"], schema, "spec") == []


def test_openapi_check_catches_mistakes():
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    bad = {"pgbouncer": {"poolMode": "sometimes", "instances": 0}, "redis": {"maxmemry": "1Gi"}}
    assert len(validate_openapi(bad, schema, "spec")) == 3


def test_cluster_example_is_the_design_topology():
    spec = ClusterSpec.model_validate(example("cluster.yaml")[1]["spec"])
    assert (spec.postgres.resources.primary.cpu, spec.postgres.resources.primary.memory) == ("8", "32Gi")
    assert (spec.postgres.resources.replica.cpu, spec.postgres.resources.replica.memory) == ("4", "16Gi")
    assert spec.postgres.storage.size == "1Ti"
    assert [(r.name, r.pool_size, r.promotable) for r in spec.replicas] == [
        ("search", 25, True), ("orders", 25, True), ("analytics", 20, False)]
    bouncer = spec.pgbouncer
    assert (bouncer.instances, bouncer.pool_mode.value, bouncer.default_pool_size,
            bouncer.max_client_conn, bouncer.primary_pool_size) == (2, "transaction", 100, 1000, 30)
    assert (spec.redis.resources.cpu, spec.redis.resources.memory) == ("2", "8Gi")
    ttls = spec.redis.cache_ttls
    assert (ttls.listings_seconds, ttls.shop_info_seconds, ttls.aggregations_seconds,
            ttls.search_results_seconds) == (300, 300, 900, 900)
    assert [(t.table, t.schedule) for t in spec.maintenance.partitioned_tables] == [("orders", "0 0 1 * *")]
    assert [(v.name, v.schedule) for v in spec.maintenance.materialized_views] == [("shop_analytics", "0 * * * *")]
    assert spec.failover.enabled
    assert (spec.postgres.init_sql.config_map_name, spec.postgres.init_sql.key) == ("shop-schema", "init.sql")


def test_small_example_has_the_same_topology_on_a_laptop_budget():
    big = ClusterSpec.model_validate(example("cluster.yaml")[1]["spec"])
    small = ClusterSpec.model_validate(example("cluster-small.yaml")[1]["spec"])
    assert small.replicas == big.replicas
    assert small.maintenance == big.maintenance
    assert (small.pgbouncer.instances, small.failover.enabled) == (big.pgbouncer.instances, True)
    computes = [small.postgres.resources.primary, small.postgres.resources.replica,
                small.pgbouncer.resources, small.redis.resources]
    for res in computes:
        assert to_bytes(res.cpu) <= to_bytes("500m") and to_bytes(res.memory) <= to_bytes("512Mi"), res
    assert small.postgres.storage.size == "1Gi"
    assert small.redis.resources.memory == "64Mi"


def test_kustomization_builds_the_schema_config_map_the_cluster_names():
    kustomization = load_docs(EXAMPLES / "kustomization.yaml")[0]
    _, cluster = example("cluster.yaml")
    init_sql = cluster["spec"]["postgres"]["initSQL"]
    assert kustomization["resources"] == ["cluster.yaml"]
    assert kustomization["generatorOptions"]["disableNameSuffixHash"] is True
    [generator] = kustomization["configMapGenerator"]
    assert generator["name"] == init_sql["configMapName"]
    assert generator["namespace"] == cluster["metadata"]["namespace"]
    assert generator["files"] == [f"{init_sql['key']}=shop-schema.sql"]


# --- Dockerfile --------------------------------------------------------------------------------

def test_dockerfile_runs_the_operator_as_the_manifests_user():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    assert re.search(r"^USER 65532:65532$", text, re.M)
    assert 'ENTRYPOINT ["shopdb-operator"]' in text
    assert 'CMD ["run", "--all-namespaces"]' in text
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ignored[1] == "*" and {"!pyproject.toml", "!README.md", "!operator/"} <= set(ignored)


# --- Helm chart ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def helm() -> str:
    localkube = os.environ.get("LK_CACHE", "/var/cache/shopdb-localkube")
    candidates = [os.environ.get("HELM"), shutil.which("helm"), "/var/cache/shopdb-tools/bin/helm",
                  f"{localkube}/tools/bin/helm"]  # the one tests/cluster/lib/build-tools.sh builds
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    message = ("no helm binary ($HELM, PATH, /var/cache/shopdb-tools/bin/helm); "
               "build it as helm/shopdb-operator/README.md says (Testing the chart)")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run_helm(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def render(helm: str, *sets: str, namespace: str = OPERATOR_NAMESPACE, check: bool = True):
    args = ["template", "shopdb-operator", str(CHART), "--namespace", namespace,
            "--kube-version", KUBE_VERSION]
    for value in sets:
        args += ["--set", value]
    result = run_helm(helm, *args, check=check)
    return [d for d in yaml.safe_load_all(result.stdout) if d] if check else result


def test_chart_versions_follow_the_package():
    chart = load_docs(CHART / "Chart.yaml")[0]
    assert chart["apiVersion"] == "v2"
    assert chart["version"] == chart["appVersion"] == shopdb_operator.__version__
    assert chart["kubeVersion"] == ">=1.30.0-0"


def test_values_schema_is_strict():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    for name, section in schema["properties"].items():
        if section.get("type") == "object" and name not in {"global", "nodeSelector", "affinity"}:
            assert section.get("additionalProperties") is False, name
    assert schema["properties"]["rbac"]["properties"]["scope"]["enum"] == ["cluster", "namespace"]
    assert schema["properties"]["image"]["properties"]["pullPolicy"]["enum"] == ["IfNotPresent", "Always", "Never"]


@pytest.mark.parametrize("sets", [[], ["rbac.scope=namespace", "watchNamespaces={shop,shop-staging}"]])
def test_helm_lint_passes(helm, sets):
    args = ["lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION]
    for value in sets:
        args += ["--set", value]
    run_helm(helm, *args)


def test_manifests_are_the_rendered_chart(helm, tmp_path):
    """manifests/ is rendered from the chart (manifests/render.sh): one source of the RBAC rules."""
    subprocess.run(["sh", str(MANIFESTS / "render.sh"), str(tmp_path)], check=True,
                   env={**os.environ, "HELM": helm}, timeout=120)
    rendered = sorted(tmp_path.iterdir())
    assert rendered
    for path in rendered:
        assert (MANIFESTS / path.name).read_text() == path.read_text(), \
            f"manifests/{path.name} is stale: run HELM={helm} manifests/render.sh"


def test_cluster_scope_renders_the_manifests_objects(helm):
    docs = render(helm)
    assert_least_privilege(docs)
    assert rule_map(only(docs, "ClusterRole")["rules"]) == rule_map(only(install_docs(), "ClusterRole")["rules"])
    assert "--all-namespaces" in container(only(docs, "Deployment"))["args"]
    assert not [d for d in docs if d["kind"] == "Role" and d["metadata"]["namespace"] != OPERATOR_NAMESPACE]


def test_namespace_scope_grants_roles_only_in_watched_namespaces(helm):
    docs = render(helm, "rbac.scope=namespace", "watchNamespaces={shop,shop-staging}", namespace="team")
    assert_least_privilege(docs)
    cluster_role = only(docs, "ClusterRole")
    assert rule_map(cluster_role["rules"]) == KOPF_CLUSTER_RULES
    assert cluster_role["metadata"]["name"] == "shopdb-operator-team"
    for namespace in ("shop", "shop-staging"):
        assert rule_map(only(docs, "Role", namespace)["rules"]) == {**NAMESPACED_PEERING, **NAMESPACED_RULES}
        binding = only(docs, "RoleBinding", namespace)
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "shopdb-operator", "namespace": "team"}]
    assert rule_map(only(docs, "Role", "team")["rules"]) == LEASE_RULES
    args = container(only(docs, "Deployment"))["args"]
    assert args == ["run", "--namespace", "shop", "--namespace", "shop-staging"]
    assert cli_parser().parse_args(args).namespace == ["shop", "shop-staging"]


def test_namespace_scope_defaults_to_the_release_namespace(helm):
    docs = render(helm, "rbac.scope=namespace", namespace="team")
    assert container(only(docs, "Deployment"))["args"] == ["run", "--namespace", "team"]
    roles = [d for d in docs if d["kind"] == "Role"]
    assert {d["metadata"]["namespace"] for d in roles} == {"team"} and len(roles) == 2


def test_values_reach_the_deployment(helm):
    docs = render(helm, "image.repository=registry.example/shopdb", "image.tag=1.2.3",
                  "operator.extraArgs={--peering=shopdb}", "rbac.create=false", "crds.install=false")
    main = container(only(docs, "Deployment"))
    assert main["image"] == "registry.example/shopdb:1.2.3"
    assert {e["name"]: e.get("value") for e in main["env"]}["SHOPDB_OPERATOR_IMAGE"] == main["image"]
    assert main["args"] == ["run", "--all-namespaces", "--peering=shopdb"]
    assert cli_parser().parse_args(main["args"]).peering == "shopdb"
    assert {d["kind"] for d in docs} == {"ServiceAccount", "Deployment"}


def test_chart_crd_is_kept_on_uninstall_and_can_be_left_out(helm):
    crds = [d for d in render(helm) if d["kind"] == "CustomResourceDefinition"]
    assert len(crds) == 1 and crds[0]["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crds[0]["spec"] == crd()["spec"]


@pytest.mark.parametrize("bad, message", [
    ("rbac.scope=galaxy", "rbac.scope"),
    ("image.pullPolicy=Sometimes", "pullPolicy"),
    ("surprise=1", "surprise"),
    ("podSecurityContext.runAsNonRoot=false", "runAsNonRoot"),
    ("watchNamespaces={shop}", "watchNamespaces is only used with rbac.scope=namespace"),
])
def test_bad_values_are_rejected(helm, bad, message):
    result = render(helm, bad, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_chart_crd_template_is_generated():
    """templates/crd.yaml comes from the API models; never edited by hand."""
    assert generate.CHART_CRD_FILE == CHART / "templates" / "crd.yaml"
    assert generate.CHART_CRD_FILE.read_text() == generate.chart_crd_yaml(), \
        "run: python -m shopdb_operator.api.generate"


def test_test_module_basenames_are_unique():
    """pytest's default import mode keys test modules by basename: two test files of the
    same name in different folders stop the whole run at collection."""
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(REPO)} / {path.relative_to(REPO)}")
        seen.setdefault(path.name, path)
    assert not clashes, f"test modules sharing a basename: {clashes}"
