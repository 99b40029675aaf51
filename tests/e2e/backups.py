"""What the backup tests share: two real S3 servers (versitygw, one per "region") over TLS
with a CA the test makes, a backed-up cluster, and recovery clusters made from it."""

from __future__ import annotations

import hashlib
import threading
import time

import yaml
from shopdb_operator import certs

from load import POSTGRES_PORT, ClusterView, instance_addresses
from support import apply_schema_config_map, example_cluster, wait_for

S3_NAMESPACE = "shopdb-e2e-s3"
REGIONS = ("a", "b")
BUCKET = "shop-backups"
ACCESS_KEY = "shopdb-e2e"
S3_PORT = 7070
READY_TIMEOUT = 600


def s3_host(region: str, namespace: str = S3_NAMESPACE) -> str:
    return f"s3-{region}.{namespace}.svc"


class S3Servers:
    """versitygw (an S3 gateway over a directory) per region, serving TLS with a certificate
    from a CA made here; the CA goes to pgBackRest, which verifies it (never turned off)."""

    def __init__(self, kubectl, images, namespace: str = S3_NAMESPACE):
        import secrets

        self.kubectl, self.images, self.namespace = kubectl, images, namespace
        self.secret_key = secrets.token_urlsafe(24)
        self.ca = certs.new_ca("shopdb e2e S3 CA")
        names = [n for r in REGIONS for n in (s3_host(r, namespace), f"{s3_host(r, namespace)}.cluster.local")]
        self.server = certs.issue(self.ca, "s3", names)

    def start(self) -> None:
        kubectl = self.kubectl
        kubectl("create", "namespace", self.namespace, check=False)
        docs = [{
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3", "namespace": self.namespace},
            "stringData": {"tls.crt": self.server.cert_pem, "tls.key": self.server.key_pem,
                           "access": ACCESS_KEY, "secret": self.secret_key},
        }]
        for region in REGIONS:
            docs += self._server(region)
        kubectl.apply(yaml.safe_dump_all(docs))
        for region in REGIONS:
            kubectl("-n", self.namespace, "rollout", "status", f"deployment/s3-{region}", "--timeout=180s", timeout=200)

    def _server(self, region: str) -> list[dict]:
        labels = {"app": f"s3-{region}"}
        secret_env = [{"name": name, "valueFrom": {"secretKeyRef": {"name": "s3", "key": key}}}
                      for name, key in (("ROOT_ACCESS_KEY_ID", "access"), ("ROOT_SECRET_ACCESS_KEY", "secret"))]
        security = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]}}
        deployment = {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"s3-{region}", "namespace": self.namespace, "labels": labels},
            "spec": {
                "replicas": 1, "selector": {"matchLabels": labels}, "strategy": {"type": "Recreate"},
                # a new certificate (a new run against servers left up) rolls the server
                "template": {"metadata": {"labels": labels, "annotations": {
                    "shopdb.io/certificate": hashlib.sha256(self.server.cert_pem.encode()).hexdigest()[:16]}},
                             "spec": {
                    "securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                                        "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "automountServiceAccountToken": False,
                    # the bucket is a directory of the gateway's root
                    "initContainers": [{
                        "name": "bucket", "image": self.images.postgres, "securityContext": security,
                        "command": ["mkdir", "-p", f"/data/{BUCKET}"],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
                    }],
                    "containers": [{
                        "name": "versitygw", "image": self.images.versitygw, "imagePullPolicy": "IfNotPresent",
                        "args": ["--port", f":{S3_PORT}", "--cert", "/tls/tls.crt", "--key", "/tls/tls.key",
                                 "--quiet", "posix", "/data"],
                        "env": secret_env,
                        "ports": [{"containerPort": S3_PORT, "name": "s3"}],
                        "securityContext": security,
                        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                        "volumeMounts": [{"name": "data", "mountPath": "/data"},
                                         {"name": "tls", "mountPath": "/tls", "readOnly": True},
                                         {"name": "tmp", "mountPath": "/tmp"}],
                        "readinessProbe": {"tcpSocket": {"port": S3_PORT}, "periodSeconds": 2},
                    }],
                    "volumes": [{"name": "data", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}},
                                {"name": "tls", "secret": {"secretName": "s3",
                                                           "items": [{"key": "tls.crt", "path": "tls.crt"},
                                                                     {"key": "tls.key", "path": "tls.key"}]}}],
                }},
            },
        }
        service = {"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": f"s3-{region}", "namespace": self.namespace},
                   "spec": {"selector": labels, "ports": [{"name": "https", "port": 443, "targetPort": S3_PORT}]}}
        return [deployment, service]

    def client_secrets(self, namespace: str, secret_key: str | None = None, ca_pem: str | None = None) -> None:
        """The key pair and the CA a cluster in `namespace` uses (Secrets `s3-credentials`, `s3-ca`)."""
        docs = [
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-credentials", "namespace": namespace},
             "stringData": {"accessKeyId": ACCESS_KEY, "secretAccessKey": secret_key or self.secret_key}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-ca", "namespace": namespace},
             "stringData": {"ca.crt": ca_pem or self.ca.cert_pem}},
        ]
        self.kubectl.apply(yaml.safe_dump_all(docs))

    def stop(self) -> None:
        self.kubectl("delete", "namespace", self.namespace, "--wait=false", "--ignore-not-found", check=False)


def repository(region: str, namespace: str = S3_NAMESPACE, **overrides) -> dict:
    repo = {"name": f"region-{region}",
            "s3": {"endpoint": s3_host(region, namespace), "bucket": BUCKET, "uriStyle": "path",
                   "credentials": {"secretName": "s3-credentials"}, "ca": {"name": "s3-ca", "key": "ca.crt"}}}
    repo.update(overrides)
    return repo


def small(cluster: dict, replicas: list[dict]) -> dict:
    """A cluster that fits beside another one and two S3 servers on two cores."""
    spec = cluster["spec"]
    spec["replicas"] = replicas
    spec["postgres"]["resources"] = {"primary": {"cpu": "300m", "memory": "512Mi"},
                                     "replica": {"cpu": "100m", "memory": "256Mi"}}
    spec["pgbouncer"].update({"instances": 1, "resources": {"cpu": "50m", "memory": "64Mi"}})
    spec["redis"]["resources"] = {"cpu": "50m", "memory": "64Mi"}
    return cluster


def create_cluster(kubectl, images, s3: S3Servers, namespace: str, spec_extra: dict, replicas: list[dict]) -> ClusterView:
    kubectl("create", "namespace", namespace)
    s3.client_secrets(namespace)
    apply_schema_config_map(kubectl, namespace)
    cluster = small(example_cluster(images, namespace), replicas)
    cluster["spec"].update(spec_extra)
    kubectl.apply(yaml.safe_dump(cluster))
    try:
        wait_for(lambda: (kubectl.json("-n", namespace, "get", "sdc", "shop").get("status") or {}).get("phase")
                 == "Ready", READY_TIMEOUT, f"cluster {namespace}/shop to become Ready", interval=3)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{not_ready_report(kubectl, namespace)}") from None
    return ClusterView(kubectl.kubeconfig, namespace)


def not_ready_report(kubectl, namespace: str) -> str:
    """The cluster's phase and conditions, its pods and the namespace's latest Events."""
    status = kubectl.json("-n", namespace, "get", "sdc", "shop").get("status") or {}
    conditions = [f"{c.get('type')}={c.get('status')} {c.get('reason')}: {c.get('message')}"
                  for c in status.get("conditions") or []]
    pods = kubectl("-n", namespace, "get", "pods", "-o", "wide", check=False).stdout
    events = kubectl("-n", namespace, "get", "events", "--sort-by=.lastTimestamp", check=False).stdout
    return (f"phase {status.get('phase')}; conditions:\n  " + "\n  ".join(conditions)
            + f"\npods:\n{pods}\nlatest events:\n" + "\n".join(events.splitlines()[-25:]))


def execute(view: ClusterView, instance: str, statement: str, params=()) -> None:
    """A statement that returns no rows (DDL, INSERT), as the superuser, on one instance."""
    import psycopg

    address = instance_addresses(view.kubeconfig, view.namespace, view.name)[instance]
    with psycopg.connect(host=address, port=POSTGRES_PORT, user="postgres", password=view.superuser,
                         dbname="postgres", connect_timeout=5, autocommit=True) as conn:
        conn.execute(statement, params)


def backup_of(view: ClusterView, repository_name: str) -> dict:
    return ((view.status().get("backup") or {}).get("repositories") or {}).get(repository_name) or {}


def condition(view: ClusterView, type_: str) -> dict:
    return next((c for c in view.status().get("conditions") or [] if c["type"] == type_), {})


def wait_archived(view: ClusterView, timeout: float = 120) -> str:
    """Switch to a new WAL segment and wait until the primary archived the one it closed."""
    primary = view.primary()
    segment = view.sql(primary, "SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    try:
        wait_for(lambda: (view.sql(primary, "SELECT last_archived_wal FROM pg_stat_archiver")[0][0] or "") >= segment,
                 timeout, f"{segment} archived", interval=1)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{archiver_report(view, primary)}") from None
    return segment


def archiver_report(view: ClusterView, primary: str) -> str:
    """What the archiver and pgBackRest said, for a failure message."""
    import subprocess

    lines = [f"pg_stat_archiver on {primary}: {view.sql(primary, 'SELECT * FROM pg_stat_archiver')}"]
    ready = view.sql(primary, "SELECT name FROM pg_ls_archive_statusdir() ORDER BY name")
    lines.append(f"archive_status: {[r[0] for r in ready]}")
    logs = subprocess.run(["kubectl", "--kubeconfig", view.kubeconfig, "-n", view.namespace, "logs", f"{primary}-0",
                           "-c", "postgres", "--tail=80"], capture_output=True, text=True, timeout=60)
    lines.append(f"postgres log (last 80 lines):\n{logs.stdout}{logs.stderr}")
    return "\n".join(lines)


def db_time(view: ClusterView) -> str:
    return view.sql(view.primary(), "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', "
                                     "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")[0][0]


class Committer(threading.Thread):
    """A row stamped with its commit time every 50 ms, straight to the primary, until stopped or
    the first error (the cluster is gone); keeps every acknowledged stamp."""

    def __init__(self, view: ClusterView, table: str = "rpo_probe"):
        super().__init__(daemon=True)
        self.view, self.table, self.acked, self.done = view, table, [], threading.Event()

    def run(self) -> None:
        import psycopg

        address = instance_addresses(self.view.kubeconfig, self.view.namespace, self.view.name)[self.view.primary()]
        with psycopg.connect(host=address, port=POSTGRES_PORT, user="postgres", password=self.view.superuser,
                             dbname="postgres", autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (at timestamptz PRIMARY KEY)")
            while not self.done.is_set():
                try:
                    self.acked.append(conn.execute(f"INSERT INTO {self.table} VALUES (clock_timestamp()) "
                                                   "RETURNING at").fetchone()[0])
                except psycopg.Error:
                    return
                time.sleep(0.05)

    @property
    def last_acked(self):
        return self.acked[-1] if self.acked else None
