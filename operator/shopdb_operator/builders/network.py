"""NetworkPolicies: a database instance accepts connections only from PgBouncer, its
peers (replication), the operator and the maintenance Jobs of its own cluster."""

from __future__ import annotations

from ..backup.config import PGBACKREST_PORT
from ..backup.jobs import BACKUP
from .common import (MAINTENANCE, OPERATOR_POD_LABELS, PGBOUNCER, POSTGRES, POSTGRES_PORT, REDIS,
                     REDIS_PORT, ClusterContext, metadata, selector)


def _rule(port: int, sources: list[dict] | None) -> dict:
    rule: dict = {"ports": [{"protocol": "TCP", "port": port}]}
    if sources is not None:
        rule["from"] = sources
    return rule


def _policy(ctx: ClusterContext, name: str, component: str, port: int, sources: list[dict] | None,
            more: list[dict] = ()) -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(ctx, name, component),
        "spec": {
            "podSelector": {"matchLabels": selector(ctx, component)},
            "policyTypes": ["Ingress"],
            "ingress": [_rule(port, sources), *more],
        },
    }


def postgres_network_policy(ctx: ClusterContext) -> dict:
    sources = [
        {"podSelector": {"matchLabels": selector(ctx, component)}}
        for component in (PGBOUNCER, POSTGRES, MAINTENANCE)
    ]
    # the operator, in its own namespace only: a look-alike pod elsewhere is not let in
    sources.append({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ctx.operator_namespace}},
        "podSelector": {"matchLabels": OPERATOR_POD_LABELS},
    })
    # backup Jobs reach the pgBackRest servers (mutual TLS), nothing else does
    more = [_rule(PGBACKREST_PORT, [{"podSelector": {"matchLabels": selector(ctx, BACKUP)}}])] \
        if ctx.spec.backup is not None else []
    return _policy(ctx, ctx.child("postgres"), POSTGRES, POSTGRES_PORT, sources, more)


def pgbouncer_network_policy(ctx: ClusterContext) -> dict:
    """Applications anywhere may reach PgBouncer, but only on its port."""
    return _policy(ctx, ctx.child(PGBOUNCER), PGBOUNCER, POSTGRES_PORT, None)


def redis_network_policy(ctx: ClusterContext) -> dict:
    return _policy(ctx, ctx.child(REDIS), REDIS, REDIS_PORT, None)


def network_policies(ctx: ClusterContext) -> list[dict]:
    policies = [postgres_network_policy(ctx), pgbouncer_network_policy(ctx)]
    if ctx.spec.redis.enabled:
        policies.append(redis_network_policy(ctx))
    return policies
