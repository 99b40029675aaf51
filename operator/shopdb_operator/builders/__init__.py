"""Pure builders: a cluster's spec and topology in, the Kubernetes objects it needs out."""

from __future__ import annotations

from .agent import agent_objects
from .common import ClusterContext, built
from .cronjobs import maintenance_cronjobs
from .network import network_policies
from .pgbouncer import pgbouncer_objects
from .postgres import (PGDATA, instance_config_map, instance_statefulset, postgres_disruption_budget,
                       scripts_config_map)
from .redis import redis_objects
from .services import database_services


def desired_objects(ctx: ClusterContext) -> list[dict]:
    """Every child except the credential Secrets (created once, never re-applied).

    Order matters on first creation: configuration before the pods that mount it.
    """
    return built(ctx, ("desired_objects",), lambda: _desired_objects(ctx))


def _desired_objects(ctx: ClusterContext) -> list[dict]:
    from ..backup import backup_objects  # backup/ builds on builders.common: imported when used

    backup = backup_objects(ctx, PGDATA)
    objects: list[dict] = [scripts_config_map(ctx), *backup[:1], *agent_objects(ctx), *instance_objects(ctx)]
    objects += database_services(ctx)
    objects.append(postgres_disruption_budget(ctx))
    objects += pgbouncer_objects(ctx)
    objects += redis_objects(ctx)
    objects += maintenance_cronjobs(ctx)
    objects += backup[1:]
    objects += network_policies(ctx)
    return objects


def instance_objects(ctx: ClusterContext) -> list[dict]:
    """Every instance's ConfigMap, then every StatefulSet: all that depends on each one's role."""
    return ([instance_config_map(ctx, i) for i in ctx.topology.instances]
            + [instance_statefulset(ctx, i) for i in ctx.topology.instances])


__all__ = ["ClusterContext", "desired_objects", "instance_objects"]
