"""Fixtures for end-to-end tests against a real Kubernetes cluster.

Where the cluster comes from, in order:

1. ``SHOPDB_KUBECONFIG`` set: that cluster is used as is (never torn down).
2. ``pytest --kind``: a kind cluster through pytest-kind, when Docker is present;
   without Docker the e2e tests are skipped, with the reason shown.
3. Otherwise the local single-node cluster of ``tests/cluster/localkube``
   (``localkube up``, needs root), torn down at the end of the session unless
   ``SHOPDB_KEEP_CLUSTER=1``. With ``CI=true`` a cluster that cannot come up
   fails the tests instead of skipping them.

Only the standard library, pytest and ``kubectl`` are used here, so the fixtures
work from any venv. Tests get:

- ``cluster``: path of an admin kubeconfig (session scope);
- ``kubectl``: a helper running kubectl against it;
- ``namespace``: a fresh namespace per test, deleted afterwards;
- ``images``: the image names to use (env ``SHOPDB_IMAGE_*`` overrides);
- ``kube``: the operator's own API client on that kubeconfig (imported when asked for).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCALKUBE = REPO / "tests" / "cluster" / "localkube"
LOCAL_KUBECONFIG = "/var/lib/shopdb-localkube/admin.kubeconfig"

IMAGE_DEFAULTS = {
    "postgres": "localhost/shopdb/postgres:15",
    "pgbouncer": "localhost/shopdb/pgbouncer:1",
    "redis": "localhost/shopdb/redis:7",
    "operator": "localhost/shopdb/operator:dev",
    "pause": "localhost/shopdb/pause:3.10",
    "versitygw": "localhost/shopdb/versitygw:1.8.0",
}


def pytest_addoption(parser):
    group = parser.getgroup("shopdb-e2e")
    group.addoption("--kind", action="store_true", default=False,
                    help="run e2e tests on a kind cluster (pytest-kind, needs Docker)")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(reason: str):
    """Fail in CI (a missing cluster is a broken pipeline), skip elsewhere."""
    if _in_ci():
        pytest.fail(f"e2e cluster unavailable in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class Images:
    postgres: str
    pgbouncer: str
    redis: str
    operator: str
    pause: str
    versitygw: str

    @classmethod
    def from_env(cls) -> "Images":
        return cls(**{k: os.environ.get(f"SHOPDB_IMAGE_{k.upper()}", v) for k, v in IMAGE_DEFAULTS.items()})


class Kubectl:
    """``kubectl`` bound to one kubeconfig."""

    def __init__(self, kubeconfig: str):
        self.kubeconfig = kubeconfig

    def __call__(self, *args: str, input: str | None = None, check: bool = True,
                 timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(["kubectl", "--kubeconfig", self.kubeconfig, *args], input=input,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def json(self, *args: str) -> dict:
        return json.loads(self(*args, "-o", "json").stdout)

    def apply(self, manifest: str, namespace: str | None = None) -> None:
        ns = ["-n", namespace] if namespace else []
        self(*ns, "apply", "-f", "-", input=manifest)

    def wait(self, *args: str, timeout: int = 120) -> None:
        self("wait", *args, f"--timeout={timeout}s", timeout=timeout + 30)


def _start_local_cluster(request) -> str:
    if os.geteuid() != 0:
        _unavailable("the local cluster (tests/cluster/localkube) needs root; "
                     "set SHOPDB_KUBECONFIG to use another cluster")
    if shutil.which("kubectl") is None:
        _unavailable("kubectl not found on PATH")
    started = time.monotonic()
    proc = subprocess.run([str(LOCALKUBE), "up"], capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        _unavailable(f"`localkube up` failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    print(f"\nlocalkube up took {time.monotonic() - started:.0f}s")
    if os.environ.get("SHOPDB_KEEP_CLUSTER") != "1":
        def down():
            subprocess.run([str(LOCALKUBE), "down"], capture_output=True, text=True, timeout=600)
        request.addfinalizer(down)
    # `localkube up` ends by printing its env (export KUBECONFIG=...).
    for line in proc.stdout.splitlines():
        if line.startswith("export KUBECONFIG="):
            return line.split("=", 1)[1].strip()
    return LOCAL_KUBECONFIG


def _start_kind_cluster(request) -> str:
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("--kind given but no working Docker here: e2e tests skipped")
    # pytest-kind reads these when imported; its own defaults (kind v0.17, kubectl v1.25) are
    # too old for the node images the workflow uses (.github/workflows/e2e.yaml)
    os.environ.setdefault("KIND_VERSION", "v0.30.0")
    os.environ.setdefault("KUBECTL_VERSION", "v1.34.0")
    try:
        from pytest_kind import KindCluster  # type: ignore[import-not-found]
    except ImportError:
        _unavailable("--kind given but pytest-kind is not installed (pip install '.[kind]')")
    kind = KindCluster("shopdb-e2e", image=os.environ.get("SHOPDB_KIND_NODE_IMAGE", "kindest/node:v1.34.0"))
    kind.create()
    if os.environ.get("SHOPDB_KEEP_CLUSTER") != "1":
        request.addfinalizer(kind.delete)
    return str(kind.kubeconfig_path)


@pytest.fixture(scope="session")
def cluster(request) -> str:
    """Path of an admin kubeconfig for the e2e cluster."""
    explicit = os.environ.get("SHOPDB_KUBECONFIG")
    if explicit:
        kubeconfig = explicit
    elif request.config.getoption("--kind"):
        kubeconfig = _start_kind_cluster(request)
    else:
        kubeconfig = _start_local_cluster(request)
    probe = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "get", "--raw", "/readyz"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        _unavailable(f"cluster at {kubeconfig} not ready: {probe.stderr.strip()}")
    return kubeconfig


@pytest.fixture(scope="session")
def kubectl(cluster) -> Kubectl:
    return Kubectl(cluster)


@pytest.fixture(scope="session")
def images() -> Images:
    """Image names for tests; the local cluster has all of them (operator once built
    with `localkube image operator .`)."""
    return Images.from_env()


@pytest.fixture
def namespace(kubectl, request) -> str:
    """A fresh namespace for one test, deleted (without waiting) afterwards."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"e2e-{base}-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    # The service account controller needs a moment before pods can be created.
    deadline = time.monotonic() + 60
    while kubectl("-n", name, "get", "serviceaccount", "default", check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"no default service account in {name}")
        time.sleep(0.5)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture
def kube(kubectl):
    import kubernetes
    from shopdb_operator.kube.client import Configuration, Kube

    config = Configuration()
    kubernetes.config.load_kube_config(config_file=kubectl.kubeconfig, client_configuration=config)
    return Kube(config)


@pytest.fixture(scope="module")
def operator(kubectl, images):
    """The operator installed from crds/ and manifests/ (as users do), running the image of
    this checkout; removed at the end of the module, CRD included: the Helm tests install
    their own, and Helm refuses to adopt a CRD that kubectl created. The CRD goes first,
    while the operator still runs to release the finalizers of any cluster left."""
    from support import install_operator

    install_operator(kubectl, images)
    yield
    kubectl("delete", "-f", str(REPO / "crds"), "--ignore-not-found", "--wait=true", "--timeout=120s", check=False,
            timeout=180)
    from support import finish_crd_deletion
    finish_crd_deletion(kubectl)  # a cluster whose deletion outlasted the wait: never left Terminating
    kubectl("delete", "-f", str(REPO / "manifests"), "--ignore-not-found", "--wait=true", check=False, timeout=300)


@pytest.fixture(scope="module")
def clusters(kubectl, images, operator):
    """For the failover tests: clusters["async"] / clusters["sync"], a ClusterView Ready with
    every replica streaming (failovers.Clusters: one at a time, per module)."""
    from failovers import Clusters
    from support import is_local_cluster

    if not is_local_cluster(kubectl):
        # kind (users' CI, CI=true there too): its pod and Service addresses live inside Docker's
        # network, so these tests cannot run there; a skip with the reason, not a failure.
        pytest.skip("the failover tests reach pods and Services by their cluster addresses, which only the "
                    "local cluster (tests/cluster/localkube) routes to the test host; kind keeps them inside Docker")
    made = Clusters(kubectl, images)
    yield made
    for kind in list(made.views):
        made.delete(kind)
