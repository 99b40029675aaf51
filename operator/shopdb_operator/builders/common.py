"""What every builder shares: the cluster context, names, labels, owner references,
security contexts, resources and probes. Builders are pure: spec in, manifests out."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from .. import GROUP, KIND, VERSION
from ..api.spec import ClusterSpec, ComputeResources
from ..topology import Topology

LABEL_CLUSTER = f"{GROUP}/cluster"
LABEL_INSTANCE = f"{GROUP}/instance"
LABEL_ROLE = f"{GROUP}/role"
LABEL_PROMOTABLE = f"{GROUP}/promotable"
LABEL_ROUTE_PREFIX = f"{GROUP}/route-"
COMPONENT = "app.kubernetes.io/component"
OPERATOR_POD_LABELS = {"app.kubernetes.io/name": "shopdb-operator"}

POSTGRES = "postgres"
PGBOUNCER = "pgbouncer"
REDIS = "redis"
MAINTENANCE = "maintenance"

POSTGRES_PORT = 5432
REDIS_PORT = 6379
POSTGRES_UID = 999  # the official postgres image's user
NONROOT_UID = 70  # PgBouncer and Redis run as this unprivileged uid

T = TypeVar("T")


@dataclass(frozen=True)
class ClusterContext:
    """Everything a builder may read: the parsed spec and where the cluster lives."""

    name: str
    namespace: str
    uid: str
    spec: ClusterSpec
    topology: Topology
    operator_image: str
    operator_namespace: str = "shopdb-system"
    # What builders made from this context (see built()); never copied to another context.
    memo: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def child(self, suffix: str) -> str:
        return f"{self.name}-{suffix}"


def built(ctx: ClusterContext, key: tuple, build: Callable[[], T]) -> T:
    """`build()`, made once per context: the failover daemon's checks (every 2 s) and the
    drift timer render the same manifests from the same context again and again. Callers
    must not change what they get."""
    if key not in ctx.memo:
        ctx.memo[key] = build()
    return ctx.memo[key]


def scripts_config_map_name(ctx: ClusterContext) -> str:
    """The shell the database pods and the backup Jobs run (scripts/)."""
    return ctx.child("scripts")


def route_label(route: str) -> str:
    return f"{LABEL_ROUTE_PREFIX}{route}"


def labels(ctx: ClusterContext, component: str, **extra: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "shopdb",
        "app.kubernetes.io/instance": ctx.name,
        "app.kubernetes.io/managed-by": "shopdb-operator",
        COMPONENT: component,
        LABEL_CLUSTER: ctx.name,
        **extra,
    }


def selector(ctx: ClusterContext, component: str, **extra: str) -> dict[str, str]:
    return {LABEL_CLUSTER: ctx.name, COMPONENT: component, **extra}


def owner_reference(ctx: ClusterContext) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": ctx.name,
        "uid": ctx.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(ctx: ClusterContext, name: str, component: str, owned: bool = True, **extra_labels: str) -> dict:
    meta = {"name": name, "namespace": ctx.namespace, "labels": labels(ctx, component, **extra_labels)}
    if owned:
        meta["ownerReferences"] = [owner_reference(ctx)]
    return meta


def pod_security_context(uid: int) -> dict:
    return {
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "fsGroupChangePolicy": "OnRootMismatch",
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def container_resources(res: ComputeResources) -> dict:
    """Requests equal limits: a database must not be the first thing the kernel kills."""
    amount = {"cpu": res.cpu, "memory": res.memory}
    return {"requests": dict(amount), "limits": dict(amount)}


def exec_probe(command: list[str], period: int, timeout: int, failures: int) -> dict:
    return {
        "exec": {"command": command},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
        "successThreshold": 1,
    }


def tcp_probe(port: int, period: int, failures: int) -> dict:
    return {"tcpSocket": {"port": port}, "periodSeconds": period, "timeoutSeconds": 3,
            "failureThreshold": failures}


def secret_env(name: str, secret: str, key: str = "password") -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def empty_dir(name: str, medium: str = "", size: str | None = None) -> dict:
    source: dict = {}
    if medium:
        source["medium"] = medium
    if size:
        source["sizeLimit"] = size
    return {"name": name, "emptyDir": source}


def config_map_volume(name: str, config_map: str, mode: int = 0o444, optional: bool = False) -> dict:
    volume = {"name": name, "configMap": {"name": config_map, "defaultMode": mode}}
    if optional:
        volume["configMap"]["optional"] = True
    return volume


def soft_anti_affinity(match_labels: dict[str, str]) -> dict:
    """Spread across nodes when there are several; still schedulable on one node (kind, CI)."""
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 100,
                "podAffinityTerm": {
                    "labelSelector": {"matchLabels": match_labels},
                    "topologyKey": "kubernetes.io/hostname",
                },
            }]
        }
    }


def content_hash(*parts: object) -> str:
    """A short stable hash; put on pod templates so a config change rolls the pods."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
