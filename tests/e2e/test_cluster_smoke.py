"""Smoke tests: the e2e cluster can run what shopdb-operator needs.

Node readiness, a non-root PostgreSQL pod writing to a dynamically provisioned
volume, Service + cluster DNS, and (on the local cluster) the network-safety
rules that keep cluster traffic on this machine.
"""
from __future__ import annotations

import subprocess
import textwrap
import time
from pathlib import Path

import pytest

LOCALKUBE = Path(__file__).resolve().parents[1] / "cluster" / "localkube"
LOCAL_KUBECONFIG = "/var/lib/shopdb-localkube/admin.kubeconfig"


def _resources(indent: int) -> str:
    return textwrap.indent(
        "resources:\n  requests: {cpu: 50m, memory: 64Mi}\n  limits: {memory: 256Mi}\n", " " * indent)


def _wait_pod_done(kubectl, namespace: str, pod: str, timeout: int = 180) -> str:
    """Wait until the pod has finished; return its logs, fail if it did not succeed."""
    deadline = time.monotonic() + timeout
    phase = None
    while time.monotonic() < deadline:
        phase = kubectl("-n", namespace, "get", "pod", pod, "-o", "jsonpath={.status.phase}").stdout
        if phase in ("Succeeded", "Failed"):
            break
        time.sleep(1)
    logs = kubectl("-n", namespace, "logs", pod, check=False).stdout
    if phase != "Succeeded":
        raise AssertionError(f"pod {pod} ended {phase or 'nowhere'}:\n{logs}")
    return logs


def _describe_on_failure(kubectl, namespace: str) -> str:
    return kubectl("-n", namespace, "get", "pods,pvc,events", "-o", "wide", check=False).stdout


def test_node_ready(kubectl):
    nodes = kubectl.json("get", "nodes")["items"]
    assert nodes, "no nodes"
    for node in nodes:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True", f"node {node['metadata']['name']} not Ready"
        print(f"{node['metadata']['name']}: allocatable {node['status']['allocatable']}")


def test_default_storage_class(kubectl):
    classes = kubectl.json("get", "storageclass")["items"]
    defaults = [c["metadata"]["name"] for c in classes
                if c["metadata"].get("annotations", {}).get("storageclass.kubernetes.io/is-default-class") == "true"]
    assert len(defaults) == 1, f"expected exactly one default StorageClass, got {defaults}"


def test_postgres_pod_nonroot_writes_pvc(kubectl, namespace, images):
    kubectl.apply(textwrap.dedent(f"""\
        apiVersion: v1
        kind: PersistentVolumeClaim
        metadata: {{name: data}}
        spec:
          accessModes: [ReadWriteOnce]
          resources: {{requests: {{storage: 100Mi}}}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: pg}}
        spec:
          restartPolicy: Never
          securityContext: {{runAsUser: 999, runAsGroup: 999, fsGroup: 999, runAsNonRoot: true}}
          containers:
          - name: pg
            image: {images.postgres}
            imagePullPolicy: IfNotPresent
            command: [bash, -ec]
            args:
            - |
              id
              postgres --version
              for b in psql pg_ctl initdb pg_basebackup pg_rewind; do command -v $b; done
              initdb -D /var/lib/postgresql/data/pgdata -U postgres >/dev/null
              pg_ctl -D /var/lib/postgresql/data/pgdata -o "-c listen_addresses=''" -w start >/dev/null
              psql -h /var/run/postgresql -U postgres -Atc "select 'sql-ok ' || version()"
              pg_ctl -D /var/lib/postgresql/data/pgdata -m fast -w stop >/dev/null
              echo written > /var/lib/postgresql/data/probe && cat /var/lib/postgresql/data/probe
            volumeMounts:
            - {{name: data, mountPath: /var/lib/postgresql/data}}
{_resources(12)}
          volumes:
          - name: data
            persistentVolumeClaim: {{claimName: data}}
        """), namespace)
    try:
        logs = _wait_pod_done(kubectl, namespace, "pg", timeout=240)
    except AssertionError as e:
        pytest.fail(f"{e}\n{_describe_on_failure(kubectl, namespace)}")
    assert "uid=999" in logs
    assert "postgres (PostgreSQL) 15" in logs
    assert "sql-ok PostgreSQL 15" in logs
    assert "written" in logs
    pvc = kubectl.json("-n", namespace, "get", "pvc", "data")
    assert pvc["status"]["phase"] == "Bound"
    assert pvc["spec"]["storageClassName"]


def test_service_and_dns(kubectl, namespace, images):
    kubectl.apply(textwrap.dedent(f"""\
        apiVersion: v1
        kind: Pod
        metadata: {{name: redis, labels: {{app: redis}}}}
        spec:
          securityContext: {{runAsUser: 999, runAsNonRoot: true}}
          containers:
          - name: redis
            image: {images.redis}
            imagePullPolicy: IfNotPresent
            ports: [{{containerPort: 6379}}]
            readinessProbe:
              exec: {{command: [redis-cli, ping]}}
              periodSeconds: 1
{_resources(12)}
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: cache}}
        spec:
          selector: {{app: redis}}
          ports: [{{port: 6379, targetPort: 6379}}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: empty}}
        spec:
          selector: {{app: nobody}}
          ports: [{{port: 6379, targetPort: 6379}}]
        """), namespace)
    kubectl.wait("-n", namespace, "pod/redis", "--for=condition=Ready", timeout=120)
    kubectl.apply(textwrap.dedent(f"""\
        apiVersion: v1
        kind: Pod
        metadata: {{name: client}}
        spec:
          restartPolicy: Never
          securityContext: {{runAsUser: 999, runAsNonRoot: true}}
          containers:
          - name: client
            image: {images.redis}
            imagePullPolicy: IfNotPresent
            command: [sh, -ec]
            args:
            - |
              cat /etc/resolv.conf
              getent hosts kubernetes.default.svc.cluster.local
              getent hosts cache.{namespace}.svc.cluster.local
              getent hosts cache
              # kube-proxy programs a new Service's endpoints a moment after the pod is Ready
              for i in $(seq 1 20); do
                out=$(redis-cli -h cache.{namespace}.svc.cluster.local ping 2>&1) || true
                [ "$out" = PONG ] && break; sleep 1
              done
              echo "ping: $out"
              rc=0; out=$(timeout 5 redis-cli -h empty ping 2>&1) || rc=$?
              echo "empty: rc=$rc $out"
              if getent hosts example.com; then echo "external: resolved"; else echo "external: not resolved"; fi
{_resources(12)}
        """), namespace)
    try:
        logs = _wait_pod_done(kubectl, namespace, "client", timeout=120)
    except AssertionError as e:
        pytest.fail(f"{e}\n{_describe_on_failure(kubectl, namespace)}")
    svc_ip = kubectl("-n", namespace, "get", "svc", "cache", "-o", "jsonpath={.spec.clusterIP}").stdout
    k8s_ip = kubectl("-n", "default", "get", "svc", "kubernetes", "-o", "jsonpath={.spec.clusterIP}").stdout
    assert f"{k8s_ip} " in logs and "kubernetes.default.svc.cluster.local" in logs
    assert logs.count(svc_ip) >= 2, logs
    assert "ping: PONG" in logs
    # A Service without endpoints refuses at once (kube-proxy's REJECT), it does not time out.
    assert "Connection refused" in logs and "empty: rc=124" not in logs, logs


def _is_local(cluster: str) -> bool:
    return cluster == LOCAL_KUBECONFIG


def test_network_safety_rules(cluster, kubectl, namespace, images):
    if not _is_local(cluster):
        pytest.skip("network-safety rules are a property of the local cluster (tests/cluster/localkube)")
    # The harness's own assertions (guard chains, routes, no masquerade, CoreDNS without upstream).
    check = subprocess.run([str(LOCALKUBE), "check-network"], capture_output=True, text=True, timeout=120)
    print(check.stdout)
    assert check.returncode == 0, check.stdout + check.stderr
    # And independently of the harness: the guards come first in mangle FORWARD/POSTROUTING ...
    postrouting = subprocess.run(["iptables", "-w", "-t", "mangle", "-S", "POSTROUTING"],
                                 capture_output=True, text=True, check=True).stdout.splitlines()
    assert postrouting[1] == "-A POSTROUTING -j SHOPDB-EGRESS-GUARD", postrouting
    forward = subprocess.run(["iptables", "-w", "-t", "mangle", "-S", "FORWARD"],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    assert forward[1] == "-A FORWARD -j SHOPDB-FORWARD-GUARD", forward
    guard = subprocess.run(["iptables", "-w", "-t", "mangle", "-S", "SHOPDB-EGRESS-GUARD"],
                           capture_output=True, text=True, check=True).stdout
    for cidr in ("10.244.0.0/16", "10.96.0.0/16"):
        assert f"-s {cidr} -j DROP" in guard and f"-d {cidr} -j DROP" in guard, guard
    # ... the CNI bridge does not masquerade ...
    nat = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True, text=True, check=True).stdout
    assert not [l for l in nat.splitlines() if "MASQUERADE" in l and "KUBE-POSTROUTING" not in l], nat
    # ... and cluster DNS has no upstream: a public name does not resolve (the query only
    # ever reaches our CoreDNS service IP).
    corefile = kubectl("-n", "kube-system", "get", "configmap", "coredns", "-o", "jsonpath={.data.Corefile}").stdout
    assert "forward" not in corefile and "proxy" not in corefile, corefile
    kubectl.apply(textwrap.dedent(f"""\
        apiVersion: v1
        kind: Pod
        metadata: {{name: dns-external}}
        spec:
          restartPolicy: Never
          securityContext: {{runAsUser: 999, runAsNonRoot: true}}
          containers:
          - name: c
            image: {images.redis}
            command: [sh, -c, "if getent hosts example.com; then echo RESOLVED; else echo NOT-RESOLVED; fi"]
{_resources(12)}
        """), namespace)
    logs = _wait_pod_done(kubectl, namespace, "dns-external", timeout=120)
    assert "NOT-RESOLVED" in logs, logs


def test_host_network_pods_are_refused(cluster, kubectl, namespace, images):
    """Pod Security baseline keeps every pod inside the fenced pod network."""
    if not _is_local(cluster):
        pytest.skip("the baseline Pod Security default is a property of the local cluster")
    proc = kubectl("-n", namespace, "apply", "-f", "-", check=False, input=textwrap.dedent(f"""\
        apiVersion: v1
        kind: Pod
        metadata: {{name: hostnet}}
        spec:
          hostNetwork: true
          containers:
          - {{name: c, image: {images.redis}}}
        """))
    assert proc.returncode != 0 and "hostNetwork" in proc.stderr, proc.stdout + proc.stderr
