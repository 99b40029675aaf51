"""PgBouncer: the one address applications use. Each route is a virtual database that
points at a Service, so a failover never touches PgBouncer's configuration."""

from __future__ import annotations

from .. import scripts
from .common import (
    built,
    PGBOUNCER, POSTGRES_PORT, NONROOT_UID, ClusterContext, config_map_volume, container_resources,
    container_security_context, content_hash, empty_dir, labels, metadata, pod_security_context,
    secret_env, selector, soft_anti_affinity, tcp_probe,
)
from . import config_files
from .secrets import APP_CREDENTIAL, PGBOUNCER_ADMIN_USER, PGBOUNCER_CREDENTIAL

CONFIG_MOUNT = "/etc/pgbouncer"
RUN_DIR = "/var/run/pgbouncer"
START_SCRIPT = "pgbouncer-start.sh"


def pgbouncer_backends(ctx: ClusterContext) -> dict[str, tuple[str, int]]:
    backends = {"primary": (ctx.child("rw"), POSTGRES_PORT), "ro": (ctx.child("ro"), POSTGRES_PORT)}
    for replica in ctx.spec.replicas:
        backends[replica.name] = (ctx.child(replica.name), POSTGRES_PORT)
    return backends


def pgbouncer_config_map(ctx: ClusterContext) -> dict:
    return built(ctx, ("pgbouncer_config_map",), lambda: _pgbouncer_config_map(ctx))


def _pgbouncer_config_map(ctx: ClusterContext) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(ctx, ctx.child(PGBOUNCER), PGBOUNCER),
        "data": {
            "pgbouncer.ini": config_files.pgbouncer_ini(ctx.spec, pgbouncer_backends(ctx), POSTGRES_PORT),
            START_SCRIPT: scripts.instance_scripts()[START_SCRIPT],
        },
    }


def pgbouncer_deployment(ctx: ClusterContext) -> dict:
    spec = ctx.spec.pgbouncer
    pod_labels = labels(ctx, PGBOUNCER)
    container = {
        "name": "pgbouncer",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", f"{CONFIG_MOUNT}/{START_SCRIPT}", f"{CONFIG_MOUNT}/pgbouncer.ini"],
        "env": [
            {"name": "PGBOUNCER_RUN_DIR", "value": RUN_DIR},
            {"name": "PGBOUNCER_APP_USER", "value": ctx.spec.postgres.owner},
            secret_env("PGBOUNCER_APP_PASSWORD", APP_CREDENTIAL.secret_name(ctx)),
            {"name": "PGBOUNCER_ADMIN_USER", "value": PGBOUNCER_ADMIN_USER},
            secret_env("PGBOUNCER_ADMIN_PASSWORD", PGBOUNCER_CREDENTIAL.secret_name(ctx)),
        ],
        "ports": [{"name": "pgbouncer", "containerPort": POSTGRES_PORT, "protocol": "TCP"}],
        "resources": container_resources(spec.resources),
        "securityContext": container_security_context(),
        "readinessProbe": tcp_probe(POSTGRES_PORT, 5, 3),
        "livenessProbe": tcp_probe(POSTGRES_PORT, 10, 6),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "run", "mountPath": RUN_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(ctx, ctx.child(PGBOUNCER), PGBOUNCER),
        "spec": {
            "replicas": spec.instances,
            "selector": {"matchLabels": selector(ctx, PGBOUNCER)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    # pgbouncer.ini is reloaded in place (handlers/rollout.py): only a new
                    # start script replaces the pods
                    "annotations": {"shopdb.io/start-script-hash": content_hash(scripts.instance_scripts()[START_SCRIPT])},
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": pod_security_context(NONROOT_UID),
                    "affinity": soft_anti_affinity(selector(ctx, PGBOUNCER)),
                    "containers": [container],
                    "volumes": [
                        config_map_volume("config", ctx.child(PGBOUNCER), mode=0o555),
                        empty_dir("run"),
                        empty_dir("tmp"),
                    ],
                },
            },
        },
    }


def pgbouncer_service(ctx: ClusterContext) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(ctx, ctx.child(PGBOUNCER), PGBOUNCER),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(ctx, PGBOUNCER),
            "ports": [{"name": "pgbouncer", "port": POSTGRES_PORT, "targetPort": "pgbouncer", "protocol": "TCP"}],
        },
    }


def pgbouncer_disruption_budget(ctx: ClusterContext) -> dict:
    budget = {"minAvailable": 1} if ctx.spec.pgbouncer.instances > 1 else {"maxUnavailable": 1}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(ctx, ctx.child(PGBOUNCER), PGBOUNCER),
        "spec": {**budget, "selector": {"matchLabels": selector(ctx, PGBOUNCER)}},
    }


def pgbouncer_objects(ctx: ClusterContext) -> list[dict]:
    return [pgbouncer_config_map(ctx), pgbouncer_deployment(ctx), pgbouncer_service(ctx),
            pgbouncer_disruption_budget(ctx)]
