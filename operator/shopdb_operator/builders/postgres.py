"""The PostgreSQL instances: one StatefulSet per instance, its ConfigMap, the shared
scripts ConfigMap and the PodDisruptionBudget.

One StatefulSet per instance, not one for all: the primary and the replicas differ in
resources and settings, roles move on failover, and a dedicated replica (analytics) must
be removable without renumbering the others. Each StatefulSet uses `OnDelete`, so a
template change (a new role after failover) never restarts a database by itself: the
operator decides when a pod restarts.
"""

from __future__ import annotations

import copy
import math

from .. import scripts
from ..api.quantity import to_bytes
from ..backup import config as backup_config
from ..backup.volumes import instance_volumes as backup_volumes
from ..api.spec import ComputeResources
from ..rollout.rolling import ANNOTATION_SPEC_HASH, ANNOTATION_TEMPLATE_HASH
from ..topology import PRIMARY, Instance
from . import config_files
from .agent import AGENT, agent_container, service_account_name, token_volume
from .common import (
    built,
    LABEL_INSTANCE, LABEL_PROMOTABLE, LABEL_ROLE, POSTGRES, POSTGRES_PORT, POSTGRES_UID,
    ClusterContext, config_map_volume, container_resources, container_security_context,
    content_hash, empty_dir, exec_probe, labels, metadata, pod_security_context, route_label,
    scripts_config_map_name, secret_env, selector, soft_anti_affinity, tcp_probe,
)
from .secrets import (APP_CREDENTIAL, REPLICATION_CREDENTIAL, REPLICATION_USER,
                      SUPERUSER_CREDENTIAL)

DATA_MOUNT = "/var/lib/postgresql/data"
PGDATA = f"{DATA_MOUNT}/pgdata"  # a subdirectory: a volume's root may hold lost+found
CONFIG_MOUNT = "/etc/shopdb/config"
SCRIPTS_MOUNT = "/etc/shopdb/scripts"
INIT_MOUNT = "/etc/shopdb/init"
RUN_MOUNT = "/var/run/postgresql"
LEASE_FILE = f"{RUN_MOUNT}/primary-lease"  # written by the instance-agent (fencing/)
ANALYTICS_READY_MAX_LAG_BYTES = 64 * 1024 ** 3


def instance_config_map_name(instance: Instance) -> str:
    return f"{instance.name}-config"


def headless_service_name(ctx: ClusterContext) -> str:
    return ctx.child("instances")


def instance_resources(ctx: ClusterContext, instance: Instance) -> ComputeResources:
    res = ctx.spec.postgres.resources
    return res.primary if ctx.topology.role_of(instance.name) == PRIMARY else res.replica


def instance_labels(ctx: ClusterContext, instance: Instance) -> dict[str, str]:
    """Role and route labels: Services select on them, so failover is a relabel."""
    extra = {
        LABEL_INSTANCE: instance.name,
        LABEL_ROLE: ctx.topology.role_of(instance.name),
        LABEL_PROMOTABLE: str(instance.promotable).lower(),
    }
    for route in ctx.topology.routes_of(instance.name):
        extra[route_label(route)] = "true"
    return labels(ctx, POSTGRES, **extra)


def scripts_config_map(ctx: ClusterContext) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(ctx, scripts_config_map_name(ctx), POSTGRES),
        "data": scripts.instance_scripts(),
    }


def instance_config_map(ctx: ClusterContext, instance: Instance) -> dict:
    return built(ctx, ("instance_config_map", instance), lambda: _instance_config_map(ctx, instance))


def _instance_config_map(ctx: ClusterContext, instance: Instance) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(ctx, instance_config_map_name(instance), POSTGRES,
                             **{LABEL_INSTANCE: instance.name}),
        "data": {
            "postgresql.conf": config_files.postgresql_conf(
                ctx.spec, instance_resources(ctx, instance), instance.analytics,
                synchronous_standby_names=synchronous_standbys(ctx, instance),
                archive=backup_config.archive_settings(ctx, SCRIPTS_MOUNT)),
            "pg_hba.conf": config_files.pg_hba_conf(ctx.spec),
        },
    }


def synchronous_standbys(ctx: ClusterContext, instance: Instance) -> list[str]:
    """Who may acknowledge a synchronous commit: promotable peers only, never analytics,
    so that whoever acknowledged can be promoted without losing that commit."""
    return [i.name for i in ctx.topology.instances if i.promotable and i.name != instance.name]


def readiness_lag_bound(ctx: ClusterContext, instance: Instance) -> int:
    """The analytics replica may pause replay for long queries; only streaming matters there."""
    return ANALYTICS_READY_MAX_LAG_BYTES if instance.analytics else ctx.spec.failover.max_lag_bytes


def primary_start_hold_seconds(ctx: ClusterContext) -> int:
    """How long a recorded primary restarting on its data waits before it starts (instance.sh):
    the failover window, so a crashed primary never comes back writable beside the replica
    the operator is promoting. 0 when failover is off: nobody would take over."""
    failover = ctx.spec.failover
    return failover.check_interval_seconds * failover.failure_threshold if failover.enabled else 0


def _env(ctx: ClusterContext, instance: Instance) -> list[dict]:
    peers = [i.slot for i in ctx.topology.instances if i.name != instance.name]
    plain = {
        "PGDATA": PGDATA,
        "HOME": "/tmp",  # the root filesystem is read-only; psql and libpq may write dotfiles
        "SHOPDB_CLUSTER": ctx.name,
        "SHOPDB_INSTANCE": instance.name,
        "SHOPDB_PRIMARY_HOST": ctx.child("rw"),
        "SHOPDB_PRIMARY_PORT": str(POSTGRES_PORT),
        "SHOPDB_PORT": str(POSTGRES_PORT),
        "SHOPDB_LISTEN": "*",
        "SHOPDB_SLOT": instance.slot,
        "SHOPDB_PEER_SLOTS": ",".join(peers),
        "SHOPDB_DATABASE": ctx.spec.postgres.database,
        "SHOPDB_OWNER": ctx.spec.postgres.owner,
        "SHOPDB_REPLICATION_USER": REPLICATION_USER,
        "SHOPDB_READY_MAX_LAG_BYTES": str(readiness_lag_bound(ctx, instance)),
        "SHOPDB_ANALYTICS": str(instance.analytics).lower(),
        "SHOPDB_PRIMARY_START_HOLD_SECONDS": str(primary_start_hold_seconds(ctx)),
        "SHOPDB_LEASE_FILE": LEASE_FILE,
    }
    plain |= _backup_env(ctx)
    env = [{"name": k, "value": v} for k, v in plain.items()]
    env += [
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        # Read at every container start: an instance starts writable only if recorded primary.
        {"name": "SHOPDB_ROLE", "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{LABEL_ROLE}']"}}},
        secret_env("SHOPDB_SUPERUSER_PASSWORD", SUPERUSER_CREDENTIAL.secret_name(ctx)),
        secret_env("SHOPDB_REPLICATION_PASSWORD", REPLICATION_CREDENTIAL.secret_name(ctx)),
        secret_env("SHOPDB_OWNER_PASSWORD", APP_CREDENTIAL.secret_name(ctx)),
    ]
    return env


def _backup_env(ctx: ClusterContext) -> dict[str, str]:
    """What instance.sh needs to archive (stanza, configuration) and, for a cluster made from
    a backup, to restore its first primary (the source's stanza and the target's options)."""
    env = {}
    if ctx.spec.backup is not None:
        env |= {"SHOPDB_BACKUP": "true", "SHOPDB_STANZA": backup_config.stanza(ctx)}
    recovery = ctx.spec.bootstrap.recovery if ctx.spec.bootstrap else None
    if recovery is not None:
        env |= {"SHOPDB_RECOVERY_STANZA": recovery.source.cluster_name,
                "SHOPDB_RECOVERY_OPTIONS": "\n".join(backup_config.restore_options(recovery))}
    return env


def pgbackrest_server_container(ctx: ClusterContext, mounts: list[dict]) -> dict:
    """`pgbackrest server`: how a backup Job reads this instance's files over mutual TLS."""
    return {
        "name": "pgbackrest",
        "image": ctx.spec.postgres.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["bash", f"{SCRIPTS_MOUNT}/pgbackrest.sh", "instance", "server"],
        "env": [{"name": "PGDATA", "value": PGDATA}, {"name": "HOME", "value": "/tmp"}],
        "ports": [{"name": "pgbackrest", "containerPort": backup_config.PGBACKREST_PORT, "protocol": "TCP"}],
        "resources": container_resources(ctx.spec.backup.resources),
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
        "livenessProbe": tcp_probe(backup_config.PGBACKREST_PORT, 10, 6),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _startup_failure_threshold(storage: str) -> int:
    """A replica clones the whole database before it can answer: allow an hour per 100Gi."""
    hundreds_of_gib = max(1, math.ceil(to_bytes(storage) / (100 * 1024 ** 3)))
    return 360 * hundreds_of_gib  # probes every 10 s


def _shm_size(ctx: ClusterContext) -> str:
    """PostgreSQL's parallel queries use /dev/shm; the runtime's default 64Mi is too small.
    The same for both roles, so that a failover leaves the pod template's volumes as they are."""
    roles = ctx.spec.postgres.resources
    memory = max(to_bytes(roles.primary.memory), to_bytes(roles.replica.memory))
    return f"{max(64, min(2048, memory // (4 * 1024 * 1024)))}Mi"


def _volumes(ctx: ClusterContext, instance: Instance) -> tuple[list[dict], list[dict]]:
    volumes = [
        config_map_volume("config", instance_config_map_name(instance)),
        config_map_volume("scripts", scripts_config_map_name(ctx), mode=0o555),
        empty_dir("run"),
        empty_dir("tmp"),
        empty_dir("shm", medium="Memory", size=_shm_size(ctx)),
    ]
    mounts = [
        {"name": "data", "mountPath": DATA_MOUNT},
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "scripts", "mountPath": SCRIPTS_MOUNT, "readOnly": True},
        {"name": "run", "mountPath": RUN_MOUNT},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]
    init_sql = ctx.spec.postgres.init_sql
    if init_sql is not None:
        volumes.append({"name": "init", "configMap": {
            "name": init_sql.config_map_name,
            "items": [{"key": init_sql.key, "path": "init.sql"}],
        }})
        mounts.append({"name": "init", "mountPath": INIT_MOUNT, "readOnly": True})
    more_mounts, more_volumes = backup_volumes(ctx)
    return volumes + more_volumes, mounts + more_mounts


def instance_statefulset(ctx: ClusterContext, instance: Instance) -> dict:
    return built(ctx, ("instance_statefulset", instance), lambda: _instance_statefulset(ctx, instance))


def _instance_statefulset(ctx: ClusterContext, instance: Instance) -> dict:
    res = instance_resources(ctx, instance)
    storage = ctx.spec.postgres.storage
    volumes, mounts = _volumes(ctx, instance)
    pod_labels = instance_labels(ctx, instance)
    container = {
        "name": "postgres",
        "image": ctx.spec.postgres.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["bash", f"{SCRIPTS_MOUNT}/instance.sh"],
        "env": _env(ctx, instance),
        "ports": [{"name": "postgres", "containerPort": POSTGRES_PORT, "protocol": "TCP"}],
        "resources": container_resources(res),
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
        "startupProbe": exec_probe(["bash", f"{SCRIPTS_MOUNT}/probe.sh", "startup"], 10, 5,
                                   _startup_failure_threshold(storage.size)),
        "readinessProbe": exec_probe(["bash", f"{SCRIPTS_MOUNT}/probe.sh", "ready"], 5, 5, 3),
        "livenessProbe": exec_probe(["bash", f"{SCRIPTS_MOUNT}/probe.sh", "live"], 10, 5, 6),
        # a start that fails (no pgBackRest in the image, a restore that cannot reach its
        # target) leaves its last log lines in the pod's status
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    containers = [container, agent_container(ctx, instance, PGDATA, LEASE_FILE, DATA_MOUNT, RUN_MOUNT)]
    volumes.append(token_volume())
    if ctx.spec.backup is not None:
        server_mounts = [m for m in mounts if m["name"] in ("data", "scripts", "run", "tmp")
                         or m["name"].startswith("pgbackrest")]
        containers.append(pgbackrest_server_container(ctx, server_mounts))
    claim = {
        "metadata": {"name": "data", "labels": selector(ctx, POSTGRES, **{LABEL_INSTANCE: instance.name})},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": storage.size}},
        },
    }
    if storage.storage_class_name:
        claim["spec"]["storageClassName"] = storage.storage_class_name
    pod_spec = {
        # the account's token goes to the instance-agent's container only
        "serviceAccountName": service_account_name(ctx),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # The image's STOPSIGNAL SIGINT (official and local images) is a fast
        # shutdown. No preStop hook: it dies with PID 1 and reports a failure.
        "terminationGracePeriodSeconds": 60,
        "securityContext": pod_security_context(POSTGRES_UID),
        "affinity": soft_anti_affinity(selector(ctx, POSTGRES)),
        # The pause process is PID 1 and reaps detached processes (fence.sh, and
        # pgBackRest's archive-push worker), which PostgreSQL must not parent; the
        # instance-agent signals the postmaster to fence it.
        "shareProcessNamespace": True,
        "containers": containers,
        "volumes": volumes,
    }
    when_deleted = "Delete" if ctx.spec.reclaim_policy.value == "Delete" else "Retain"
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(ctx, instance.name, POSTGRES, **{LABEL_INSTANCE: instance.name}),
        "spec": {
            "replicas": 1,
            "serviceName": headless_service_name(ctx),
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "OnDelete"},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": when_deleted, "whenScaled": "Retain"},
            "selector": {"matchLabels": selector(ctx, POSTGRES, **{LABEL_INSTANCE: instance.name})},
            "template": {
                # No configuration hash here: a new configuration is reloaded in place
                # (handlers/rollout.py), never by replacing the pod. The rolling update
                # (rollout/rolling.py) compares these hashes with each pod's.
                "metadata": {"labels": pod_labels, "annotations": {
                    ANNOTATION_TEMPLATE_HASH: template_hash(pod_spec), ANNOTATION_SPEC_HASH: spec_hash(ctx)}},
                "spec": pod_spec,
            },
            "volumeClaimTemplates": [claim],
        },
    }


RESTART_FREE_ENV = ("SHOPDB_READY_MAX_LAG_BYTES", "SHOPDB_PRIMARY_START_HOLD_SECONDS")


def template_hash(pod_spec: dict) -> str:
    """What a restart would change in a pod: its spec without resources (resized in place)
    and without the instance-agent's image (the operator's: a new operator version must not
    restart every database; the agent follows at the pod's next restart)."""
    spec = copy.deepcopy(pod_spec)
    for container in spec["containers"]:
        container.pop("resources", None)
        if container["name"] == AGENT:
            container.pop("image", None)
        # failover tuning (the readiness lag bound, the start hold) is read at the next
        # start: changing it must not restart every database
        container["env"] = [e for e in container.get("env") or [] if e["name"] not in RESTART_FREE_ENV]
    return content_hash(spec)


def spec_hash(ctx: ClusterContext) -> str:
    """The spec a pod template was made from (parameters and resources aside: reloaded and
    resized in place): a template that changed while this did not is the operator's doing."""
    return content_hash(ctx.spec.model_dump(mode="json", exclude={"postgres": {"parameters": True, "resources": True}}))


def postgres_disruption_budget(ctx: ClusterContext) -> dict:
    """Voluntary evictions take at most one database instance at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(ctx, ctx.child("postgres"), POSTGRES),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(ctx, POSTGRES)}},
    }
