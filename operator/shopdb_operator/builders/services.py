"""Services in front of the database instances.

`-rw` selects the instance labelled primary and `-<route>` the instance(s) labelled for
that route, so moving traffic is relabelling pods, never rewriting a Service.
"""

from __future__ import annotations

from .common import (LABEL_PROMOTABLE, LABEL_ROLE, POSTGRES, POSTGRES_PORT, ClusterContext,
                     metadata, route_label, selector)
from .postgres import headless_service_name


def _service(ctx: ClusterContext, name: str, select: dict[str, str], headless: bool = False) -> dict:
    spec: dict = {
        "type": "ClusterIP",
        "selector": select,
        "ports": [{"name": "postgres", "port": POSTGRES_PORT, "targetPort": "postgres", "protocol": "TCP"}],
    }
    if headless:
        spec["clusterIP"] = "None"
        # peers must resolve each other while they are still starting (replication bootstrap)
        spec["publishNotReadyAddresses"] = True
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata(ctx, name, POSTGRES), "spec": spec}


def rw_service(ctx: ClusterContext) -> dict:
    return _service(ctx, ctx.child("rw"), selector(ctx, POSTGRES, **{LABEL_ROLE: "primary"}))


def ro_service(ctx: ClusterContext) -> dict:
    """Round-robin over the promotable replicas (the dedicated analytics replica is spared)."""
    return _service(ctx, ctx.child("ro"), selector(ctx, POSTGRES, **{LABEL_ROLE: "replica", LABEL_PROMOTABLE: "true"}))


def route_service(ctx: ClusterContext, route: str) -> dict:
    return _service(ctx, ctx.child(route), selector(ctx, POSTGRES, **{route_label(route): "true"}))


def headless_service(ctx: ClusterContext) -> dict:
    return _service(ctx, headless_service_name(ctx), selector(ctx, POSTGRES), headless=True)


def database_services(ctx: ClusterContext) -> list[dict]:
    return [rw_service(ctx), ro_service(ctx), headless_service(ctx)] + [
        route_service(ctx, replica.name) for replica in ctx.spec.replicas
    ]
