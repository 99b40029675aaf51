"""Backups with pgBackRest: pure builders from the spec (configuration, volumes, Jobs,
the TLS Secret's layout) and the reading of what the backup Jobs report."""

from __future__ import annotations

from ..builders.common import POSTGRES, ClusterContext, metadata
from ..certs import Issued
from . import config
from .jobs import backup_cronjobs
from .volumes import config_map_name, tls_secret_name


def needed(ctx: ClusterContext) -> bool:
    """pgBackRest runs in this cluster: it backs up, or it is made from a backup."""
    return ctx.spec.backup is not None or (ctx.spec.bootstrap is not None and ctx.spec.bootstrap.recovery is not None)


def config_map(ctx: ClusterContext, pgdata: str) -> dict:
    data = {}
    if ctx.spec.backup is not None:
        data[config.INSTANCE_CONF] = config.instance_conf(ctx, pgdata)
        data[config.JOB_CONF] = config.job_conf(ctx, pgdata)
        data[config.VERIFY_CONF] = config.verify_conf(ctx)
    recovery = ctx.spec.bootstrap.recovery if ctx.spec.bootstrap else None
    if recovery is not None:
        data[config.RECOVERY_CONF] = config.recovery_conf(ctx, recovery, pgdata)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(ctx, config_map_name(ctx), POSTGRES),
            "data": data}


def server_dns_names(ctx: ClusterContext) -> list[str]:
    domain = config.instance_service_domain(ctx)
    return [f"*.{domain}", f"*.{domain}.cluster.local"]


def tls_secret(ctx: ClusterContext, ca: Issued, server: Issued, client: Issued) -> dict:
    """The link between backup Jobs and the instances' pgBackRest servers (mutual TLS).
    Kept with the volumes (no owner) unless reclaimPolicy is Delete, like the credentials."""
    owned = ctx.spec.reclaim_policy.value == "Delete"
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": metadata(ctx, tls_secret_name(ctx), POSTGRES, owned=owned),
        "stringData": {"ca.crt": ca.cert_pem, "tls.crt": server.cert_pem, "tls.key": server.key_pem,
                       "client.crt": client.cert_pem, "client.key": client.key_pem},
    }


def backup_objects(ctx: ClusterContext, pgdata: str) -> list[dict]:
    """The ConfigMap (before the pods that mount it) and the scheduled backups."""
    if not needed(ctx):
        return []
    return [config_map(ctx, pgdata), *backup_cronjobs(ctx)]


__all__ = ["backup_objects", "config", "config_map", "needed", "server_dns_names", "tls_secret", "tls_secret_name"]
