"""Redis, the cache tier: a Deployment without persistence (it is a cache), its Service,
and a ConfigMap that tells applications where it is and how long to cache what."""

from __future__ import annotations

from ..api.quantity import to_bytes
from .common import (
    NONROOT_UID, REDIS, REDIS_PORT, ClusterContext, config_map_volume, container_resources,
    container_security_context, content_hash, empty_dir, exec_probe, labels, metadata,
    pod_security_context, secret_env, selector,
)
from .secrets import REDIS_CREDENTIAL

CONFIG_MOUNT = "/etc/redis"
RUN_DIR = "/var/run/redis"
# The password reaches Redis through a file in an emptyDir: not in argv, not in a ConfigMap.
START_COMMAND = (
    "umask 077 && printf 'requirepass %s\\n' \"$REDIS_PASSWORD\" > " + RUN_DIR + "/auth.conf"
    " && exec redis-server " + CONFIG_MOUNT + "/redis.conf"
)


def redis_maxmemory_bytes(ctx: ClusterContext) -> int:
    spec = ctx.spec.redis
    if spec.maxmemory:
        return to_bytes(spec.maxmemory)
    return to_bytes(spec.resources.memory) * 3 // 4  # headroom for fragmentation and buffers


def redis_conf(ctx: ClusterContext) -> str:
    lines = [
        f"port {REDIS_PORT}",
        "bind 0.0.0.0",
        "protected-mode yes",
        f"maxmemory {redis_maxmemory_bytes(ctx)}",
        f"maxmemory-policy {ctx.spec.redis.maxmemory_policy.value}",
        'save ""',  # a cache: no snapshots, no AOF
        "appendonly no",
        f"dir {RUN_DIR}",
        "tcp-keepalive 60",
        f"include {RUN_DIR}/auth.conf",
    ]
    return "\n".join(lines) + "\n"


def redis_config_map(ctx: ClusterContext) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(ctx, ctx.child(REDIS), REDIS),
        "data": {"redis.conf": redis_conf(ctx)},
    }


def cache_settings_config_map(ctx: ClusterContext) -> dict:
    """For applications (`envFrom`): the design's cache layers and where Redis is."""
    ttl = ctx.spec.redis.cache_ttls
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(ctx, ctx.child("cache"), REDIS),
        "data": {
            "REDIS_HOST": ctx.child(REDIS),
            "REDIS_PORT": str(REDIS_PORT),
            "REDIS_PASSWORD_SECRET": REDIS_CREDENTIAL.secret_name(ctx),
            "CACHE_TTL_LISTINGS_SECONDS": str(ttl.listings_seconds),
            "CACHE_TTL_SHOP_INFO_SECONDS": str(ttl.shop_info_seconds),
            "CACHE_TTL_AGGREGATIONS_SECONDS": str(ttl.aggregations_seconds),
            "CACHE_TTL_SEARCH_RESULTS_SECONDS": str(ttl.search_results_seconds),
        },
    }


def redis_deployment(ctx: ClusterContext) -> dict:
    spec = ctx.spec.redis
    ping = ["sh", "-c", "redis-cli -p %d ping | grep -q PONG" % REDIS_PORT]
    container = {
        "name": "redis",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", START_COMMAND],
        "env": [
            secret_env("REDIS_PASSWORD", REDIS_CREDENTIAL.secret_name(ctx)),
            secret_env("REDISCLI_AUTH", REDIS_CREDENTIAL.secret_name(ctx)),  # probes, without argv
        ],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT, "protocol": "TCP"}],
        "resources": container_resources(spec.resources),
        "securityContext": container_security_context(),
        "readinessProbe": exec_probe(ping, 5, 3, 3),
        "livenessProbe": exec_probe(ping, 10, 5, 6),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "run", "mountPath": RUN_DIR},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(ctx, ctx.child(REDIS), REDIS),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector(ctx, REDIS)},
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {
                    "labels": labels(ctx, REDIS),
                    "annotations": {"shopdb.io/config-hash": content_hash(redis_conf(ctx))},
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security_context(NONROOT_UID),
                    "containers": [container],
                    "volumes": [config_map_volume("config", ctx.child(REDIS)), empty_dir("run")],
                },
            },
        },
    }


def redis_service(ctx: ClusterContext) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(ctx, ctx.child(REDIS), REDIS),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(ctx, REDIS),
            "ports": [{"name": "redis", "port": REDIS_PORT, "targetPort": "redis", "protocol": "TCP"}],
        },
    }


def redis_objects(ctx: ClusterContext) -> list[dict]:
    if not ctx.spec.redis.enabled:
        return []
    return [redis_config_map(ctx), cache_settings_config_map(ctx), redis_deployment(ctx), redis_service(ctx)]
