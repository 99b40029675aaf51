"""CronJobs for the maintenance the design schedules with pg_cron: monthly partitions
and materialized-view refreshes. They run `shopdb-operator maintain ...` against the
primary as the owner role."""

from __future__ import annotations

from ..api.spec import MaterializedView, PartitionedTable
from .common import (
    MAINTENANCE, POSTGRES_PORT, ClusterContext, container_security_context, content_hash,
    empty_dir, labels, metadata, pod_security_context, secret_env,
)
from .secrets import APP_CREDENTIAL

MAINTENANCE_UID = 65532
MAX_CRONJOB_NAME = 52  # the Job controller appends an 11-character suffix to a 63-char limit


def bounded_name(name: str, limit: int = MAX_CRONJOB_NAME) -> str:
    if len(name) <= limit:
        return name
    digest = content_hash(name)[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def partitions_cronjob_name(ctx: ClusterContext, table: PartitionedTable) -> str:
    return bounded_name(ctx.child(f"partitions-{table.table}".replace("_", "-")))


def refresh_cronjob_name(ctx: ClusterContext, view: MaterializedView) -> str:
    return bounded_name(ctx.child(f"refresh-{view.name}".replace("_", "-")))


def _cronjob(ctx: ClusterContext, name: str, schedule: str, args: list[str]) -> dict:
    image = ctx.spec.maintenance.image or ctx.operator_image
    container = {
        "name": "maintain",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["shopdb-operator", "maintain", *args],
        "env": [
            {"name": "PGHOST", "value": ctx.child("rw")},
            {"name": "PGPORT", "value": str(POSTGRES_PORT)},
            {"name": "PGDATABASE", "value": ctx.spec.postgres.database},
            {"name": "PGUSER", "value": ctx.spec.postgres.owner},
            secret_env("PGPASSWORD", APP_CREDENTIAL.secret_name(ctx)),
            {"name": "PGCONNECT_TIMEOUT", "value": "10"},
            {"name": "PGAPPNAME", "value": f"shopdb-{name}"},
            {"name": "HOME", "value": "/tmp"},
        ],
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": metadata(ctx, name, MAINTENANCE),
        "spec": {
            "schedule": schedule,
            "timeZone": "Etc/UTC",
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 3600,  # a run missed by less than an hour still happens
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": labels(ctx, MAINTENANCE)},
                "spec": {
                    "backoffLimit": 3,
                    "activeDeadlineSeconds": 1800,
                    "ttlSecondsAfterFinished": 7 * 24 * 3600,
                    "template": {
                        "metadata": {"labels": labels(ctx, MAINTENANCE)},
                        "spec": {
                            "restartPolicy": "Never",
                            "automountServiceAccountToken": False,
                            "enableServiceLinks": False,
                            "securityContext": pod_security_context(MAINTENANCE_UID),
                            "containers": [container],
                            "volumes": [empty_dir("tmp")],
                        },
                    },
                },
            },
        },
    }


def partitions_cronjob(ctx: ClusterContext, table: PartitionedTable) -> dict:
    args = ["partitions", "--schema", table.schema_name, "--table", table.table,
            "--column", table.column, "--premake", str(table.premake_months)]
    if table.retention_months is not None:
        args += ["--retention-months", str(table.retention_months)]
    return _cronjob(ctx, partitions_cronjob_name(ctx, table), table.schedule, args)


def refresh_cronjob(ctx: ClusterContext, view: MaterializedView) -> dict:
    args = ["views", "--schema", view.schema_name, "--view", view.name]
    return _cronjob(ctx, refresh_cronjob_name(ctx, view), view.schedule, args)


def maintenance_cronjobs(ctx: ClusterContext) -> list[dict]:
    maintenance = ctx.spec.maintenance
    return [partitions_cronjob(ctx, t) for t in maintenance.partitioned_tables] + [
        refresh_cronjob(ctx, v) for v in maintenance.materialized_views
    ]
