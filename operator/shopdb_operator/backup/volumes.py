"""The files pgBackRest reads in a database pod or a backup Job: its configuration, the TLS
material of the `pgbackrest server` link, and each repository's S3 key pair and CA, mounted
from the user's Secrets (group-readable by the postgres group only)."""

from __future__ import annotations

from ..api.spec import BackupRepository
from ..builders.common import ClusterContext
from .config import CONFIG_DIR, RECOVERY_CREDENTIALS, S3_DIR, TLS_DIR

SECRET_MODE = 0o440


def config_map_name(ctx: ClusterContext) -> str:
    return ctx.child("pgbackrest")


def tls_secret_name(ctx: ClusterContext) -> str:
    return ctx.child("pgbackrest-tls")


def _secret_volume(name: str, secret: str, items: dict[str, str]) -> dict:
    return {"name": name, "secret": {"secretName": secret, "defaultMode": SECRET_MODE,
                                     "items": [{"key": k, "path": p} for k, p in items.items()]}}


def _repository(which: str, repo: BackupRepository) -> tuple[list[dict], list[dict]]:
    creds = repo.s3.credentials
    volumes = [_secret_volume(f"s3-{which}", creds.secret_name,
                              {creds.access_key_id_key: "key", creds.secret_access_key_key: "secret"})]
    mounts = [{"name": f"s3-{which}", "mountPath": f"{S3_DIR}/{which}", "readOnly": True}]
    if repo.s3.ca is not None:
        volumes.append(_secret_volume(f"s3-ca-{which}", repo.s3.ca.name, {repo.s3.ca.key: "ca.crt"}))
        mounts.append({"name": f"s3-ca-{which}", "mountPath": f"{S3_DIR}/ca/{which}", "readOnly": True})
    return mounts, volumes


def _backup(ctx: ClusterContext, tls_items: dict[str, str]) -> tuple[list[dict], list[dict]]:
    mounts = [{"name": "pgbackrest-tls", "mountPath": TLS_DIR, "readOnly": True}]
    volumes = [_secret_volume("pgbackrest-tls", tls_secret_name(ctx), tls_items)]
    for index, repo in enumerate(ctx.spec.backup.repositories, start=1):
        more_mounts, more_volumes = _repository(f"repo{index}", repo)
        mounts += more_mounts
        volumes += more_volumes
    return mounts, volumes


def _with_config(ctx: ClusterContext, parts: list[tuple[list[dict], list[dict]]]) -> tuple[list[dict], list[dict]]:
    mounts = [{"name": "pgbackrest-config", "mountPath": CONFIG_DIR, "readOnly": True}]
    volumes = [{"name": "pgbackrest-config", "configMap": {"name": config_map_name(ctx), "defaultMode": 0o444}}]
    for more_mounts, more_volumes in parts:
        mounts += more_mounts
        volumes += more_volumes
    return mounts, volumes


def instance_volumes(ctx: ClusterContext) -> tuple[list[dict], list[dict]]:
    """(mounts, volumes) of a database pod: the server side of the TLS link and every
    repository when it backs up, the recovery source when the cluster is made from a backup;
    nothing when neither."""
    parts = []
    if ctx.spec.backup is not None:
        parts.append(_backup(ctx, {"ca.crt": "ca.crt", "tls.crt": "tls.crt", "tls.key": "tls.key"}))
    recovery = ctx.spec.bootstrap.recovery if ctx.spec.bootstrap else None
    if recovery is not None:
        parts.append(_repository(RECOVERY_CREDENTIALS, recovery.source.repository))
    return _with_config(ctx, parts) if parts else ([], [])


def job_volumes(ctx: ClusterContext) -> tuple[list[dict], list[dict]]:
    """(mounts, volumes) of a backup Job: the client side of the TLS link, every repository."""
    return _with_config(ctx, [_backup(ctx, {"ca.crt": "ca.crt", "client.crt": "client.crt",
                                            "client.key": "client.key"})])
